#!/bin/sh
# lab-coordinator.sh NAME ADDR: one of the lab's three coordinators. Waits for
# the cluster key that the init service writes on the first start.
set -e
until [ -s /secrets/cluster.key ]; do sleep 0.2; done
exec meshd coordinator --name "$1" --data-dir /data --cluster-key-file /secrets/cluster.key \
	--listen "$2:8443" --raft-listen "$2:8301" --stun-listen "$2:3478" \
	--initial-cluster c1=198.18.98.11:8301,c2=198.18.98.12:8301,c3=198.18.98.13:8301
