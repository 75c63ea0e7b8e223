#!/bin/bash
# healthcheck.sh [--connect] [--innodb_initialized]: exit 0 when every named check passes.
#   --connect             the server accepts a connection on its socket
#   --innodb_initialized  InnoDB is up (crash recovery of the redo log has finished)
# The credentials are those docker-entrypoint.sh wrote at the first start.
set -uo pipefail
cnf=/var/lib/mysql/.my-healthcheck.cnf
client=(mariadb --no-defaults --protocol=socket --socket=/run/mysqld/mysqld.sock --connect-timeout=3 -N -B)
[[ -r ${cnf} ]] && client=(mariadb --defaults-extra-file="${cnf}" --protocol=socket --socket=/run/mysqld/mysqld.sock --connect-timeout=3 -N -B)
[[ $# -gt 0 ]] || set -- --connect
for check in "$@"; do
  case ${check} in
    --connect)
      "${client[@]}" -e 'SELECT 1' >/dev/null 2>&1 || { echo "healthcheck: no connection" >&2; exit 1; } ;;
    --innodb_initialized)
      got=$("${client[@]}" -e "SELECT 1 FROM information_schema.ENGINES WHERE ENGINE='InnoDB' AND SUPPORT IN ('YES','DEFAULT','ENABLED')" 2>/dev/null)
      [[ ${got} == 1 ]] || { echo "healthcheck: InnoDB not initialised" >&2; exit 1; } ;;
    *) echo "healthcheck: unknown check ${check}" >&2; exit 2 ;;
  esac
done
