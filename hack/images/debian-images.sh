#!/usr/bin/env bash
# Builds stand-ins for the official mariadb:10.11 and memcached:1.6 images from Debian
# bookworm packages, for a test cluster that cannot pull from a registry. Usage:
#   hack/images/debian-images.sh OUT_DIR CACHE_DIR
# writes OUT_DIR/mariadb.tar and OUT_DIR/memcached.tar. Each root filesystem is built once per
# Debian package version (debootstrap --variant=minbase + apt inside) and cached in CACHE_DIR.
#
# They keep the conventions the operator's pods rely on (docs/operator.md, "Images"):
#   mariadb   runs as mysql (999:999); its entrypoint runs mariadbd for arguments starting
#             with "-", initialises an empty datadir with MARIADB_ROOT_PASSWORD and runs
#             /docker-entrypoint-initdb.d/*; healthcheck.sh --connect / --innodb_initialized.
#   memcached runs as memcache (11211:11211) with memcached as entrypoint, so flag arguments
#             work as they do on the official image.
# Needs root (debootstrap, chroot) and the Debian mirror of this machine's apt sources.
set -euo pipefail

out=${1:?usage: debian-images.sh OUT_DIR CACHE_DIR}
cache=${2:?usage: debian-images.sh OUT_DIR CACHE_DIR}
root=$(cd "$(dirname "$0")/../.." && pwd)
suite=${DEBIAN_SUITE:-bookworm}
mirror=${DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit} /^deb / {print $2; exit}' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true)}
mirror=${mirror:-http://deb.debian.org/debian}
log() { echo "debian-images: $*" >&2; }

[[ $(id -u) -eq 0 ]] || { log "needs root (debootstrap and chroot)"; exit 1; }
command -v debootstrap >/dev/null || { log "debootstrap missing: apt-get install debootstrap"; exit 1; }
mkdir -p "${out}" "${cache}"

# version PACKAGE: the candidate version apt would install, the cache key.
# (awk reads to the end: an early exit would fail apt-cache with SIGPIPE under pipefail.)
version() { apt-cache show --no-all-versions "$1" | awk '/^Version:/ && !v {v = $2} END {print v}'; }

mounted=()
cleanup() {
  for m in "${mounted[@]}"; do umount -l "$m" 2>/dev/null || true; done
  if [[ -n ${work:-} ]]; then rm -rf "${work}"; fi
}
trap cleanup EXIT

# rootfs NAME VERSION SETUP_FUNCTION [KEY]: the cached root filesystem tar of one image, keyed
# by the package version and KEY (a digest of the project's files the setup copies in).
rootfs() {
  local name=$1 ver=$2 setup=$3 key=${4:+-$4}
  local tarfile="${cache}/${name}-${suite}-${ver//[:~\/+]/_}${key}.rootfs.tar"
  trap cleanup EXIT # this runs in $(...), which does not inherit the caller's trap
  if [[ -s ${tarfile} ]]; then
    log "${name} ${ver}: cached ${tarfile}"
    echo "${tarfile}"
    return
  fi
  work=$(mktemp -d /tmp/rp-rootfs-XXXXXX)
  local dir="${work}/root"
  log "${name} ${ver}: debootstrap ${suite} from ${mirror} (first time: a few minutes)"
  debootstrap --variant=minbase "${suite}" "${dir}" "${mirror}" >&2
  mount -t proc proc "${dir}/proc" && mounted+=("${dir}/proc")
  # No daemon starts inside the chroot.
  printf '#!/bin/sh\nexit 101\n' > "${dir}/usr/sbin/policy-rc.d"
  chmod 755 "${dir}/usr/sbin/policy-rc.d"
  "${setup}" "${dir}" "${ver}"
  chroot "${dir}" apt-get clean
  rm -rf "${dir}/var/lib/apt/lists/"* "${dir}/var/cache/apt/"*.bin "${dir}/usr/sbin/policy-rc.d" \
    "${dir}/var/log/"*.log "${dir}/var/log/apt/"* "${dir}/tmp/"*
  umount "${dir}/proc" && mounted=()
  # The runtime mounts /proc, /sys and /dev; numeric owners keep 999 and 11211 as they are.
  tar --numeric-owner --xattrs -C "${dir}" --exclude=./proc/* --exclude=./sys/* --exclude=./dev/* \
    -cf "${tarfile}.partial" .
  mv "${tarfile}.partial" "${tarfile}"
  rm -rf "${work}"; work=
  echo "${tarfile}"
}

setup_mariadb() {
  local dir=$1 ver=$2
  # The official image's numbers, created before the package would pick others.
  chroot "${dir}" groupadd --system --gid 999 mysql
  chroot "${dir}" useradd --system --uid 999 --gid mysql --home-dir /var/lib/mysql --shell /usr/sbin/nologin mysql
  install "${dir}" "mariadb-server=${ver}" "mariadb-client=${ver}"
  # The entrypoint initialises the datadir on the volume; the package's own one is dropped.
  rm -rf "${dir}/var/lib/mysql" && mkdir -p "${dir}/var/lib/mysql" "${dir}/run/mysqld" "${dir}/docker-entrypoint-initdb.d"
  chown 999:999 "${dir}/var/lib/mysql" "${dir}/run/mysqld"
  chmod 1777 "${dir}/run/mysqld"
  install -m 0644 "${root}/hack/images/mariadb/99-container.cnf" "${dir}/etc/mysql/mariadb.conf.d/99-container.cnf"
  install -m 0755 "${root}/hack/images/mariadb/docker-entrypoint.sh" "${dir}/usr/local/bin/docker-entrypoint.sh"
  install -m 0755 "${root}/hack/images/mariadb/healthcheck.sh" "${dir}/usr/local/bin/healthcheck.sh"
}

setup_memcached() {
  local dir=$1 ver=$2
  chroot "${dir}" groupadd --system --gid 11211 memcache
  chroot "${dir}" useradd --system --uid 11211 --gid memcache --home-dir /nonexistent --shell /usr/sbin/nologin memcache
  install "${dir}" "memcached=${ver}"
}

# install DIR PACKAGE… runs apt-get inside the chroot DIR; install with a file first is install(1).
install() {
  if [[ -d $1 ]]; then
    local dir=$1; shift
    # The host's sources (with its updates and security suites), so the versions it lists exist.
    if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
      rm -f "${dir}/etc/apt/sources.list"
      cp /etc/apt/sources.list.d/*.sources "${dir}/etc/apt/sources.list.d/"
    fi
    chroot "${dir}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    chroot "${dir}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
  else
    command install "$@"
  fi
}

images=(go run "${root}/hack/images" rootfs)
cd "${root}"

ver=$(version mariadb-server)
[[ ${ver} == *:10.11.* || ${ver} == 10.11.* ]] || { log "mariadb-server ${ver} is not 10.11"; exit 1; }
tarfile=$(rootfs mariadb "${ver}" setup_mariadb "$(cat hack/images/mariadb/* | sha256sum | cut -c1-12)")
"${images[@]}" -rootfs "${tarfile}" -out "${out}/mariadb.tar" \
  -tag docker.io/library/mariadb:10.11 -tag "redpacketset.local/debian/mariadb:${ver//[:~+]/_}" \
  -user 999:999 -entrypoint '["docker-entrypoint.sh"]' -cmd '["mariadbd"]' \
  -env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin -env LANG=C.UTF-8 \
  -expose 3306/tcp -volume /var/lib/mysql

ver=$(version memcached)
[[ ${ver} == 1.6.* ]] || { log "memcached ${ver} is not 1.6"; exit 1; }
tarfile=$(rootfs memcached "${ver}" setup_memcached)
"${images[@]}" -rootfs "${tarfile}" -out "${out}/memcached.tar" \
  -tag docker.io/library/memcached:1.6 -tag "redpacketset.local/debian/memcached:${ver//[:~+]/_}" \
  -user 11211:11211 -entrypoint '["memcached"]' \
  -env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  -expose 11211/tcp
log "wrote ${out}/mariadb.tar and ${out}/memcached.tar"
