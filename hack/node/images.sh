#!/usr/bin/env bash
# Builds the OCI image tarballs the single-node test cluster runs, without any image registry:
#   - operator, cellserver and gateway from this checkout (static, CGO off, non-root 65532, no
#     shell), tagged as the chart and the CRD defaults name them (ghcr.io/redpacketset/*:v0.1.0);
#   - MariaDB 10.11 and memcached 1.6 from Debian bookworm packages (mmdebstrap), with the
#     conventions of the official images the operator relies on (hack/node/rootfs/*): the MariaDB
#     entrypoint prepends mariadbd to flag arguments, initialises an empty datadir with
#     MARIADB_ROOT_PASSWORD and runs /docker-entrypoint-initdb.d, healthcheck.sh exists;
#     memcached runs as the memcache user (uid 11211, as upstream).
# The Debian rootfs is cached by suite and by the hash of the files that shape it; the project
# images are rebuilt every run (seconds). Prints the directory holding the tarballs.
#
# Usage: hack/node/images.sh [base|project|all]   (default all)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "${here}/../.." && pwd)
# shellcheck source=hack/node/versions.sh
source "${here}/versions.sh"
log() { echo "node-images: $*" >&2; }
export PATH="/usr/local/go/bin:${PATH}" GOTOOLCHAIN=local

IMAGE_VERSION=${IMAGE_VERSION:-$(sed -n 's/^appVersion: *//p' "${root}/charts/redpacket-operator/Chart.yaml")}
IMAGE_REPO=${IMAGE_REPO:-ghcr.io/redpacketset}
MARIADB_IMAGE=${MARIADB_IMAGE:-localhost/redpacketset/mariadb:10.11-bookworm}
MEMCACHED_IMAGE=${MEMCACHED_IMAGE:-localhost/redpacketset/memcached:1.6-bookworm}
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
out=${NODE_IMAGES}
mkdir -p "${out}"
what=${1:-all}

pack() { "${NODE_BIN}/oci-pack" "$@"; }

build_base() {
  local key
  key=$(cat "${here}/images.sh" "${here}"/rootfs/* | sha256sum | cut -c1-16)
  local base="${NODE_CACHE}/rootfs/${DEBIAN_SUITE}-${key}"
  if [[ ! -f "${base}/rootfs.tar" ]]; then
    command -v mmdebstrap >/dev/null || { log "mmdebstrap missing: run hack/node/install-packages.sh"; exit 1; }
    log "building the Debian ${DEBIAN_SUITE} rootfs with MariaDB and memcached (~3 min)"
    mkdir -p "${base}"
    # Fixed ids, as the official images have them, so a pod's runAsUser can name them.
    mmdebstrap --quiet --variant=minbase --mode=root --format=tar \
      --essential-hook='chroot "$1" groupadd -r -g 999 mysql && chroot "$1" useradd -r -u 999 -g 999 -d /var/lib/mysql -s /usr/sbin/nologin mysql' \
      --essential-hook='chroot "$1" groupadd -r -g 11211 memcache && chroot "$1" useradd -r -u 11211 -g 11211 -d /nonexistent -s /usr/sbin/nologin memcache' \
      --include=mariadb-server,mariadb-client,memcached,ca-certificates \
      --customize-hook='rm -rf "$1"/var/lib/mysql/* "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
      --customize-hook='mkdir -p "$1"/docker-entrypoint-initdb.d "$1"/run/mysqld && chown 999:999 "$1"/var/lib/mysql "$1"/run/mysqld && chmod 0777 "$1"/run/mysqld' \
      --customize-hook='install -m 0755 '"${here}"'/rootfs/mariadb-entrypoint.sh "$1"/usr/local/bin/docker-entrypoint.sh' \
      --customize-hook='install -m 0755 '"${here}"'/rootfs/healthcheck.sh "$1"/usr/local/bin/healthcheck.sh' \
      --customize-hook='install -m 0644 '"${here}"'/rootfs/mariadb.cnf "$1"/etc/mysql/mariadb.conf.d/90-container.cnf' \
      "${DEBIAN_SUITE}" "${base}/rootfs.tar.tmp" >&2
    mv "${base}/rootfs.tar.tmp" "${base}/rootfs.tar"
  fi
  if [[ ! -f "${out}/mariadb.tar" || "${out}/mariadb.tar" -ot "${base}/rootfs.tar" ]]; then
    pack -o "${out}/mariadb.tar" -tag "${MARIADB_IMAGE}" -layer "${base}/rootfs.tar" \
      -entrypoint /usr/local/bin/docker-entrypoint.sh -cmd mariadbd -user 999:999 \
      -env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin -port 3306/tcp >&2
  fi
  if [[ ! -f "${out}/memcached.tar" || "${out}/memcached.tar" -ot "${base}/rootfs.tar" ]]; then
    pack -o "${out}/memcached.tar" -tag "${MEMCACHED_IMAGE}" -layer "${base}/rootfs.tar" \
      -entrypoint /usr/bin/memcached -user memcache -port 11211/tcp \
      -env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin >&2
  fi
}

build_project() {
  local bin="${NODE_CACHE_DIR}/project-bin"
  mkdir -p "${bin}"
  log "building operator, cellserver and gateway ${IMAGE_VERSION}"
  (cd "${root}" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "${bin}/" ./cmd/operator ./cmd/cellserver ./cmd/gateway)
  for b in operator cellserver gateway; do
    pack -o "${out}/${b}.tar" -tag "${IMAGE_REPO}/${b}:${IMAGE_VERSION}" \
      -file "${bin}/${b}=/${b}" -entrypoint "/${b}" -user 65532:65532 >&2
  done
}

case "${what}" in
  base) build_base ;;
  project) build_project ;;
  all) build_base; build_project ;;
  *) log "unknown part ${what}"; exit 2 ;;
esac
echo "${out}"
