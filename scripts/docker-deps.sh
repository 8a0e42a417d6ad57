#!/usr/bin/env bash
# docker-deps.sh [start|stop]: what the docker-compose lab needs (Debian).
#   start (default)  installs docker.io, docker-compose and busybox-static
#                    when missing and starts dockerd when no engine answers;
#                    a dockerd started here has its PID in $PIDFILE.
#   stop             stops the dockerd this script started (by that PID),
#                    and nothing else.
set -euo pipefail
PIDFILE=${MESHD_DOCKERD_PIDFILE:-/run/meshd-dockerd.pid}
LOG=${MESHD_DOCKERD_LOG:-/var/log/meshd-dockerd.log}

case "${1:-start}" in
stop)
	if [ -s "$PIDFILE" ]; then
		pid=$(cat "$PIDFILE")
		if kill -0 "$pid" 2>/dev/null && grep -q dockerd "/proc/$pid/cmdline"; then
			kill "$pid"
			for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
			kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
			echo "dockerd ($pid) stopped"
		fi
		rm -f "$PIDFILE"
	fi
	exit 0
	;;
start) ;;
*)
	echo "usage: $0 [start|stop]" >&2
	exit 2
	;;
esac

if [ "$(id -u)" != 0 ]; then
	echo "the docker lab needs root (Docker and iptables): run it with sudo" >&2
	exit 1
fi
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
command -v iptables >/dev/null || need+=(iptables)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
	echo "starting dockerd (log $LOG)"
	nohup dockerd >"$LOG" 2>&1 &
	echo $! >"$PIDFILE"
	for _ in $(seq 1 300); do
		docker info >/dev/null 2>&1 && break
		kill -0 "$(cat "$PIDFILE")" 2>/dev/null || { tail -20 "$LOG" >&2; exit 1; }
		sleep 0.2
	done
	docker info >/dev/null 2>&1 || { echo "dockerd did not answer within 60 s" >&2; tail -20 "$LOG" >&2; exit 1; }
fi
