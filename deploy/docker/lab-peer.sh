#!/bin/sh
# lab-peer.sh NAME [meshd peer up flags...]: a lab peer. Waits for its join
# token (first start only; the identity is kept in /state after), serves
# /cgi-bin/ip on port 8080 for the lab's source-address checks, then runs
# the agent in the foreground.
set -e
name=$1
shift
until [ -s "/tokens/$name" ] || [ -s /state/identity.json ]; do sleep 0.2; done
lab-www.sh
exec meshd peer up --name "$name" --state-dir /state --token-file "/tokens/$name" "$@"
