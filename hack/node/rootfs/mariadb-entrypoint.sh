#!/bin/bash
# Entrypoint of the test cluster's MariaDB image, keeping the official image's conventions that
# the operator relies on: flag arguments are mariadbd's, an empty datadir is initialised with
# MARIADB_ROOT_PASSWORD (root@'%' and root@localhost, no anonymous or password-less users) and
# /docker-entrypoint-initdb.d/* run once against a server that listens on no network.
set -euo pipefail
log() { echo "entrypoint: $*" >&2; }

if [[ "${1:-}" == -* ]]; then
  set -- mariadbd "$@"
fi
if [[ "$1" != mariadbd && "$1" != mysqld ]]; then
  exec "$@"
fi

datadir=/var/lib/mysql
# Started as root (no runAsUser): own the volume, then drop to mysql as the official image does.
if [[ "$(id -u)" == 0 ]]; then
  chown -R mysql:mysql "${datadir}"
  exec setpriv --reuid=mysql --regid=mysql --init-groups "$0" "$@"
fi

sql_escape() { local s=${1//\\/\\\\}; printf '%s' "${s//\'/\\\'}"; }

if [[ ! -d "${datadir}/mysql" ]]; then
  : "${MARIADB_ROOT_PASSWORD:?MARIADB_ROOT_PASSWORD must be set to initialise an empty datadir}"
  log "initialising ${datadir}"
  # --skip-name-resolve --force: a pod's own name may not resolve yet, which aborts the install.
  # No --user: this already runs as mysql, and install-db would chown a volume it cannot.
  mariadb-install-db --datadir="${datadir}" --skip-test-db --skip-name-resolve \
    --auth-root-authentication-method=normal --force >/dev/null
  "$@" --skip-networking --socket=/var/lib/mysql/mysqld.sock &
  pid=$!
  for _ in $(seq 1 300); do
    mariadb --protocol=socket -uroot -e 'SELECT 1' >/dev/null 2>&1 && break
    kill -0 "${pid}" 2>/dev/null || { log "temporary server exited"; exit 1; }
    sleep 0.2
  done
  pw=$(sql_escape "${MARIADB_ROOT_PASSWORD}")
  host=$(sql_escape "$(hostname)")
  # The install's root@127.0.0.1, root@::1 and root@<host> have no password and, being more
  # specific, would shadow root@'%' for clients on those addresses.
  mariadb --protocol=socket -uroot <<SQL
SET @@SESSION.SQL_LOG_BIN=0;
DROP USER IF EXISTS root@'127.0.0.1', root@'::1', root@'${host}', ''@'localhost', ''@'${host}', ''@'%';
ALTER USER root@'localhost' IDENTIFIED BY '${pw}';
CREATE USER root@'%' IDENTIFIED BY '${pw}';
GRANT ALL PRIVILEGES ON *.* TO root@'%' WITH GRANT OPTION;
FLUSH PRIVILEGES;
SQL
  for f in /docker-entrypoint-initdb.d/*; do
    case "${f}" in
      *.sh) log "running ${f}"; if [[ -x "${f}" ]]; then "${f}"; else . "${f}"; fi ;;
      *.sql) log "running ${f}"; MYSQL_PWD="${MARIADB_ROOT_PASSWORD}" mariadb --protocol=socket -uroot < "${f}" ;;
      *) ;;
    esac
  done
  MYSQL_PWD="${MARIADB_ROOT_PASSWORD}" mariadb-admin --protocol=socket -uroot shutdown
  wait "${pid}" || true
  log "initialised"
fi
exec "$@"
