#!/bin/bash
# Entrypoint of the MariaDB image built from Debian packages (hack/images/debian-images.sh),
# following the conventions of the official image that pods rely on:
#   - arguments starting with "-" are options of mariadbd;
#   - an empty datadir is initialised: root gets MARIADB_ROOT_PASSWORD (or _FILE) from any host,
#     MARIADB_DATABASE / MARIADB_USER / MARIADB_PASSWORD are created when set, and
#     /docker-entrypoint-initdb.d/* runs once (*.sh run, or sourced when not executable;
#     *.sql and *.sql.gz are fed to the client as root);
#   - healthcheck.sh finds its credentials in the datadir.
# Passwords travel by environment or stdin, never by argument.
set -euo pipefail

datadir=/var/lib/mysql
socket=/run/mysqld/mysqld.sock
log() { echo "entrypoint: $*" >&2; }

if [[ ${1:-} == -* ]]; then
  set -- mariadbd "$@"
fi
if [[ ${1:-} != mariadbd && ${1:-} != mysqld ]]; then
  exec "$@"
fi

# Started as root (no runAsUser): own the volume, then continue as mysql.
if [[ $(id -u) -eq 0 ]]; then
  chown -R mysql:mysql "${datadir}" /run/mysqld
  exec setpriv --reuid=mysql --regid=mysql --init-groups "$0" "$@"
fi

file_env() {
  local var=$1 file_var="$1_FILE"
  if [[ -n ${!file_var:-} ]]; then
    [[ -z ${!var:-} ]] || { log "both ${var} and ${file_var} are set"; exit 1; }
    export "${var}=$(<"${!file_var}")"
  fi
}

sql_string() { local s=${1//\\/\\\\}; printf "'%s'" "${s//\'/\\\'}"; }

initialise() {
  file_env MARIADB_ROOT_PASSWORD
  file_env MARIADB_PASSWORD
  if [[ -z ${MARIADB_ROOT_PASSWORD:-} && -z ${MARIADB_ALLOW_EMPTY_ROOT_PASSWORD:-} && -z ${MARIADB_RANDOM_ROOT_PASSWORD:-} ]]; then
    log "the datadir is empty and no MARIADB_ROOT_PASSWORD, MARIADB_ALLOW_EMPTY_ROOT_PASSWORD or MARIADB_RANDOM_ROOT_PASSWORD is set"
    exit 1
  fi
  if [[ -n ${MARIADB_RANDOM_ROOT_PASSWORD:-} ]]; then
    MARIADB_ROOT_PASSWORD=$(head -c 18 /dev/urandom | base64)
    log "generated a random root password: $MARIADB_ROOT_PASSWORD"
  fi
  log "initialising ${datadir}"
  # --skip-name-resolve: the pod's hostname may not resolve yet.
  mariadb-install-db --datadir="${datadir}" --skip-test-db --skip-name-resolve --auth-root-authentication-method=normal --force \
    >/dev/null
  # A server for the initialisation only: no network, so nothing reaches it half set up.
  "$@" --skip-networking --socket="${socket}" &
  local pid=$!
  local client=(mariadb --no-defaults --protocol=socket --socket="${socket}" -uroot)
  for _ in $(seq 60); do
    "${client[@]}" -e 'SELECT 1' >/dev/null 2>&1 && break
    kill -0 "${pid}" 2>/dev/null || { log "mariadbd exited during initialisation"; exit 1; }
    sleep 1
  done
  local hc_password
  hc_password=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
  {
    echo "SET @@SESSION.SQL_LOG_BIN=0;"
    # mariadb-install-db also makes password-less root@127.0.0.1, root@::1 and root@<host>;
    # they would shadow root@'%' for local TCP logins.
    echo "DELETE FROM mysql.global_priv WHERE User='' OR (User='root' AND Host NOT IN ('localhost'));"
    echo "DELETE FROM mysql.proxies_priv WHERE Host NOT IN ('localhost');"
    echo "FLUSH PRIVILEGES;"
    echo "ALTER USER 'root'@'localhost' IDENTIFIED BY $(sql_string "${MARIADB_ROOT_PASSWORD:-}");"
    echo "CREATE USER 'root'@'%' IDENTIFIED BY $(sql_string "${MARIADB_ROOT_PASSWORD:-}");"
    echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
    echo "CREATE USER 'healthcheck'@'localhost' IDENTIFIED BY $(sql_string "${hc_password}");"
    echo "GRANT USAGE ON *.* TO 'healthcheck'@'localhost';"
    if [[ -n ${MARIADB_DATABASE:-} ]]; then
      echo "CREATE DATABASE IF NOT EXISTS \`${MARIADB_DATABASE}\`;"
    fi
    if [[ -n ${MARIADB_USER:-} && -n ${MARIADB_PASSWORD:-} ]]; then
      echo "CREATE USER '${MARIADB_USER}'@'%' IDENTIFIED BY $(sql_string "${MARIADB_PASSWORD}");"
      [[ -z ${MARIADB_DATABASE:-} ]] || echo "GRANT ALL ON \`${MARIADB_DATABASE}\`.* TO '${MARIADB_USER}'@'%';"
    fi
  } | "${client[@]}"
  printf '[client]\nuser=healthcheck\npassword=%s\n' "${hc_password}" > "${datadir}/.my-healthcheck.cnf"
  chmod 600 "${datadir}/.my-healthcheck.cnf"

  export MYSQL_PWD="${MARIADB_ROOT_PASSWORD:-}"
  local f
  for f in /docker-entrypoint-initdb.d/*; do
    [[ -e ${f} ]] || continue
    case ${f} in
      *.sh)
        if [[ -x ${f} ]]; then log "running ${f}"; "${f}"; else log "sourcing ${f}"; . "${f}"; fi ;;
      *.sql) log "applying ${f}"; "${client[@]}" < "${f}" ;;
      *.sql.gz) log "applying ${f}"; gunzip -c "${f}" | "${client[@]}" ;;
      *) log "ignoring ${f}" ;;
    esac
  done
  unset MYSQL_PWD

  kill -TERM "${pid}"
  wait "${pid}" || true
  log "initialised"
}

if [[ ! -d ${datadir}/mysql ]]; then
  initialise "$@"
fi
exec "$@"
