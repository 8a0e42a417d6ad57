#!/bin/sh
# lab-admin.sh ARGS...: meshd admin commands with this coordinator's admin
# token, e.g. `docker-compose exec c1 lab-admin.sh peer list`.
MESHD_ADMIN_TOKEN=$(cat /data/admin.token)
export MESHD_ADMIN_TOKEN
exec meshd "$@"
