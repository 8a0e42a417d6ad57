#!/bin/sh
# lab-coordinator.sh NAME ADDR: one of the lab's three coordinators. Waits for
# the cluster key that the init service writes on the first start.
set -e
until [ -s /secrets/cluster.key ]; do sleep 0.2; done
exec meshd coordinator --name "$1" --data-dir /data --cluster-key-file /secrets/cluster.key \
	--listen "$2:8443" --raft-listen "$2:8301" --stun-listen "$2:3478" \
	--initial-cluster c1=10.99.0.11:8301,c2=10.99.0.12:8301,c3=10.99.0.13:8301
