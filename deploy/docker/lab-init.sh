#!/bin/sh
# lab-init.sh: the lab's one-shot bootstrap. Makes the cluster key (first
# start only), waits for the cluster's admin token, then creates one
# single-use join token per peer: gateways may announce only their site.
set -e
if [ ! -s /secrets/cluster.key ]; then
	rm -f /secrets/cluster.key.new
	meshd coordinator keygen --out /secrets/cluster.key.new
	mv /secrets/cluster.key.new /secrets/cluster.key
fi
until [ -s /c1/admin.token ]; do sleep 0.2; done
MESHD_ADMIN_TOKEN=$(cat /c1/admin.token)
export MESHD_ADMIN_TOKEN
token() {
	name=$1
	shift
	[ -s "/tokens/$name" ] && return 0
	tries=0
	until meshd token create --tag lab "$@" > "/tokens/$name.new"; do
		tries=$((tries + 1))
		[ "$tries" -lt 50 ] || exit 1
		sleep 0.2
	done
	mv "/tokens/$name.new" "/tokens/$name"
	echo "join token for $name written"
}
token gwa1 --allow-routes 198.19.10.0/24
token gwa2 --allow-routes 198.19.10.0/24
token gwb1 --allow-routes 198.19.20.0/24
token cl1
token cl2
