#!/usr/bin/env bash
# Local lab: one coordinator on loopback with its state in .lab/.
# `scripts/lab.sh` starts it in the background; `scripts/lab.sh down` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
LAB=.lab
BIN=bin/meshd

# poll CMD...: run CMD every 0.1 s until it succeeds, for at most 10 s.
poll() {
	local deadline=$((SECONDS + 10))
	until "$@"; do
		[ "$SECONDS" -lt "$deadline" ] || return 1
		sleep 0.1 # poll interval, not a wait for the condition
	done
}

if [ "${1:-}" = down ]; then
	if [ -f $LAB/c1.pid ]; then
		pid=$(cat $LAB/c1.pid)
		kill "$pid" 2>/dev/null || true
		poll bash -c "! kill -0 $pid 2>/dev/null" || kill -9 "$pid" 2>/dev/null || true
	fi
	rm -rf $LAB
	echo "lab stopped"
	exit 0
fi
mkdir -p $LAB
[ -f $LAB/cluster.key ] || $BIN coordinator keygen > $LAB/cluster.key
$BIN coordinator --name c1 --data-dir $LAB/c1 --cluster-key-file $LAB/cluster.key \
	--listen 127.0.0.1:8443 --raft-listen 127.0.0.1:8301 > $LAB/c1.log 2>&1 &
echo $! > $LAB/c1.pid
up() {
	[ -s $LAB/c1/admin.token ] && return 0
	kill -0 "$(cat $LAB/c1.pid)" 2>/dev/null || { cat $LAB/c1.log; exit 1; }
	return 1
}
poll up || { echo "coordinator did not come up within 10 s; see $LAB/c1.log"; exit 1; }
export MESHD_ADMIN_TOKEN="$(cat $LAB/c1/admin.token)"
$BIN cluster status
cat <<MSG

Coordinator up (log: $LAB/c1.log). Try:
  export MESHD_ADMIN_TOKEN=\$(cat $LAB/c1/admin.token)
  $BIN vnet list
  $BIN token create --uses 2 --allow-routes 10.1.0.0/24
  $BIN token list
Stop it with: make lab-down
MSG
