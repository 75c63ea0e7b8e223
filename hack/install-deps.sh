#!/usr/bin/env bash
# install-deps.sh installs the Debian packages the tests start themselves: MariaDB (server and
# client) and memcached. It is idempotent and non-interactive, and runs apt-get update only when
# something is missing.
#
# The tests never use the distro's default instances: internal/testenv starts its own mariadbd and
# memcached under a temp dir on 127.0.0.1 with their own ports. So this script keeps the
# packages' services from starting during install (policy-rc.d) and stops/disables any that a
# systemd host started anyway, so nothing comes to depend on them by accident.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

have() { command -v "$1" >/dev/null 2>&1; }

missing=()
if ! have mariadbd && ! have mysqld && ! [ -x /usr/sbin/mariadbd ] && ! [ -x /usr/sbin/mysqld ]; then
  missing+=(mariadb-server)
fi
if ! have mariadb-install-db && ! have mysql_install_db; then
  missing+=(mariadb-server)
fi
if ! have mariadb && ! have mysql; then
  missing+=(mariadb-client)
fi
if ! have memcached && ! [ -x /usr/bin/memcached ]; then
  missing+=(memcached)
fi

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: mariadb-server, mariadb-client and memcached already installed"
  exit 0
fi

# De-duplicate the package list.
mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi

# Forbid service starts while installing; restore whatever policy was there before.
policy=/usr/sbin/policy-rc.d
backup=""
if [ -e "$policy" ]; then
  backup="$(mktemp)"
  $sudo cp -p "$policy" "$backup"
fi
restore_policy() {
  if [ -n "$backup" ]; then
    $sudo cp -p "$backup" "$policy"
    rm -f "$backup"
  else
    $sudo rm -f "$policy"
  fi
}
trap restore_policy EXIT
printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
$sudo chmod 0755 "$policy"

echo "install-deps: installing ${pkgs[*]}"
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null

# On a systemd host the units may still have been enabled: the tests must never rely on them.
if have systemctl && [ -d /run/systemd/system ]; then
  for unit in mariadb memcached; do
    $sudo systemctl disable --now "$unit" >/dev/null 2>&1 || true
  done
fi

for bin in memcached; do
  have "$bin" || { echo "install-deps: $bin still missing after install" >&2; exit 1; }
done
if ! have mariadbd && ! have mysqld && ! [ -x /usr/sbin/mariadbd ]; then
  echo "install-deps: mariadbd still missing after install" >&2
  exit 1
fi
echo "install-deps: done"
