#!/bin/bash
# The official MariaDB image's healthcheck.sh, for the checks the operator's probes use:
#   --connect             the server accepts a TCP connection (so the entrypoint's temporary,
#                         network-less server during initialisation never counts as up);
#   --innodb_initialized  InnoDB has finished starting.
# Credentials come from the container's environment, never from argv.
set -euo pipefail
export MYSQL_PWD="${MARIADB_ROOT_PASSWORD:-}"
run() { mariadb --no-defaults --protocol=tcp -h127.0.0.1 -P3306 -uroot --connect-timeout=2 -N -s -e "$1"; }
status=0
for arg in "$@"; do
  case "${arg}" in
    --connect) run 'SELECT 1' >/dev/null || status=1 ;;
    --innodb_initialized)
      [[ "$(run "SELECT 1 FROM information_schema.ENGINES WHERE engine='InnoDB' AND support IN ('YES','DEFAULT','ENABLED')" 2>/dev/null)" == 1 ]] || status=1 ;;
    --*) echo "healthcheck.sh: unsupported check ${arg}" >&2; status=1 ;;
  esac
done
exit "${status}"
