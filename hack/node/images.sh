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

IMAGE_VERSION=${IMAGE_VERSION:-$(cat "${root}/VERSION")}
IMAGE_REPO=${IMAGE_REPO:-ghcr.io/redpacketset}
MARIADB_IMAGE=${MARIADB_IMAGE:-localhost/redpacketset/mariadb:10.11-bookworm}
MEMCACHED_IMAGE=${MEMCACHED_IMAGE:-localhost/redpacketset/memcached:1.6-bookworm}
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
out=${IMAGES_OUT:-${NODE_IMAGES}}
mkdir -p "${out}"
what=${1:-all}

# The repository's one image tool, built by hack/node/build.sh (helpers).
images() { "${NODE_BIN}/images" "$@"; }

# build_rootfs BASE: the Debian rootfs both database images share, as one layer tarball.
build_rootfs() {
  local base=$1
  command -v mmdebstrap >/dev/null || { log "mmdebstrap missing: run hack/node/install-packages.sh"; exit 1; }
  log "building the Debian ${DEBIAN_SUITE} rootfs with MariaDB and memcached (~3 min)"
  mkdir -p "${base}"
  # Fixed ids, as the official images have them, so a pod's runAsUser can name them; written
  # before the packages' maintainer scripts, which then find the users and keep them.
  mmdebstrap --quiet --variant=minbase --mode=root --format=tar \
    --essential-hook='echo "mysql:x:999:999:MariaDB:/var/lib/mysql:/usr/sbin/nologin" >> "$1"/etc/passwd && echo "mysql:x:999:" >> "$1"/etc/group' \
    --essential-hook='echo "memcache:x:11211:11211:memcached:/nonexistent:/usr/sbin/nologin" >> "$1"/etc/passwd && echo "memcache:x:11211:" >> "$1"/etc/group' \
    --include=mariadb-server,mariadb-client,memcached,ca-certificates \
    --customize-hook='rm -rf "$1"/var/lib/mysql/* "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
    --customize-hook='mkdir -p "$1"/docker-entrypoint-initdb.d && chown 999:999 "$1"/var/lib/mysql' \
    "${DEBIAN_SUITE}" "${base}/rootfs.tar.tmp" >&2
  mv "${base}/rootfs.tar.tmp" "${base}/rootfs.tar"
}

build_base() {
  # Keyed by this function's text alone: the entrypoint, healthcheck and settings are a layer
  # of their own above it, so editing them never rebuilds the rootfs.
  local key
  key=$(declare -f build_rootfs | sha256sum | cut -c1-16)
  local base="${NODE_CACHE}/rootfs/${DEBIAN_SUITE}-${key}"
  [[ -f "${base}/rootfs.tar" ]] || build_rootfs "${base}"
  if [[ ! -f "${out}/mariadb.tar" || "${out}/mariadb.tar" -ot "${base}/rootfs.tar" ]] ||
    [[ -n "$(find "${here}/rootfs" -newer "${out}/mariadb.tar" -type f)" ]]; then
    images rootfs -out "${out}/mariadb.tar" -tag "${MARIADB_IMAGE}" -rootfs "${base}/rootfs.tar" \
      -file "${here}/rootfs/mariadb-entrypoint.sh=/usr/local/bin/docker-entrypoint.sh" \
      -file "${here}/rootfs/healthcheck.sh=/usr/local/bin/healthcheck.sh" \
      -file "${here}/rootfs/mariadb.cnf=/etc/mysql/mariadb.conf.d/90-container.cnf" \
      -entrypoint '["/usr/local/bin/docker-entrypoint.sh"]' -cmd '["mariadbd"]' -user 999:999 \
      -env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin -expose 3306/tcp >&2
  fi
  if [[ ! -f "${out}/memcached.tar" || "${out}/memcached.tar" -ot "${base}/rootfs.tar" ]]; then
    images rootfs -out "${out}/memcached.tar" -tag "${MEMCACHED_IMAGE}" -rootfs "${base}/rootfs.tar" \
      -entrypoint '["/usr/bin/memcached"]' -user memcache -expose 11211/tcp \
      -env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin >&2
  fi
}

build_project() {
  log "building operator, cellserver and gateway ${IMAGE_VERSION}"
  (cd "${root}" && go run ./hack/images project -version "${IMAGE_VERSION}" -registry "${IMAGE_REPO}" -out "${out}" >&2)
}

case "${what}" in
  base) build_base ;;
  project) build_project ;;
  all) build_base; build_project ;;
  *) log "unknown part ${what}"; exit 2 ;;
esac
echo "${out}"
