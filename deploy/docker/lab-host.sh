#!/bin/sh
# lab-host.sh GATEWAY: a LAN host of a lab site. Its default route goes to
# GATEWAY (site A: the HA pair's virtual IP); it serves /cgi-bin/ip.
set -e
ip route replace default via "$1"
lab-www.sh
exec sleep 2147483647
