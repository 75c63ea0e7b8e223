#!/usr/bin/env bash
# Builds everything the single-node test cluster runs, from Go modules and Debian packages
# (these machines reach no image or binary registry): kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy, kubectl, etcd, CoreDNS without `forward`, the project's
# node helpers (pause, cri-sweep, pki), the image tool and the pause image. Containerd, runc, the CNI
# plugins, iptables and conntrack come from Debian (hack/node/install-packages.sh).
#
# Everything is cached outside the repository, keyed by version, under
# ${NODE_CACHE:-~/.cache/redpacketset/node}/<kube version>/; a second run only checks. Prints the
# cache directory on stdout; progress goes to stderr.
#
# Usage: hack/node/build.sh [kube|etcd|coredns|helpers|all]   (default all)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/node/versions.sh
source "${here}/versions.sh"
log() { echo "node-build: $*" >&2; }
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
export PATH="/usr/local/go/bin:${PATH}"

mkdir -p "${NODE_BIN}" "${NODE_CACHE_DIR}/src"
what=${1:-all}

# A build writes into a temporary name and renames at the end, so an interrupted build never
# leaves a binary that a later run would take as done.
have() { for b in "$@"; do [[ -x "${NODE_BIN}/${b}" ]] || return 1; done; }

build_kube() {
  local bins=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
  if have "${bins[@]}"; then return; fi
  log "building Kubernetes ${KUBE_VERSION} (cold: ~16 min on 2 cores)"
  local src="${NODE_CACHE_DIR}/src/kube"
  rm -rf "${src}" && mkdir -p "${src}" && cd "${src}"
  go mod init redpacket.dev/node-kube >/dev/null 2>&1
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@${KUBE_VERSION}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  [[ -f "${gomod}" ]] || { log "cannot read go.mod of k8s.io/kubernetes@${KUBE_VERSION}"; exit 1; }
  # k8s.io/kubernetes names its staging modules ./staging/...; outside its repository each one
  # is replaced by its published release of the same minor.
  local args=(-require="k8s.io/kubernetes@${KUBE_VERSION}")
  while read -r mod; do
    args+=(-replace="${mod}=${mod}@${STAGING_VERSION}")
  done < <(sed -n 's#^[[:space:]]*\(k8s.io/[^[:space:]]*\) => ./staging/.*#\1#p' "${gomod}")
  go mod edit "${args[@]}"
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
  go mod tidy >&2
  # Without the stamp every component reports v0.0.0, and Helm charts' kubeVersion checks and
  # kubectl's skew warnings misfire.
  local major minor
  major=$(echo "${KUBE_VERSION#v}" | cut -d. -f1)
  minor=$(echo "${KUBE_VERSION#v}" | cut -d. -f2)
  local ld=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X ${pkg}.gitVersion=${KUBE_VERSION} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor}"
    ld+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
  done
  local tmp="${NODE_BIN}/.kube.tmp"
  rm -rf "${tmp}" && mkdir -p "${tmp}"
  go build -trimpath -ldflags "-s -w${ld}" -o "${tmp}/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl >&2
  for b in "${bins[@]}"; do mv "${tmp}/${b}" "${NODE_BIN}/${b}"; done
  rmdir "${tmp}"
}

build_etcd() {
  if have etcd; then return; fi
  log "building etcd ${ETCD_VERSION}"
  local src="${NODE_CACHE_DIR}/src/etcd"
  rm -rf "${src}" && mkdir -p "${src}" && cd "${src}"
  go mod init redpacket.dev/node-etcd >/dev/null 2>&1
  go mod edit -require="go.etcd.io/etcd/server/v3@${ETCD_VERSION}"
  cat > main.go <<'GO'
// etcd for the single-node test cluster: the server's own entry point and nothing else.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  go mod tidy >&2
  go build -trimpath -ldflags "-s -w" -o "${NODE_BIN}/.etcd.tmp" . >&2
  mv "${NODE_BIN}/.etcd.tmp" "${NODE_BIN}/etcd"
}

build_coredns() {
  if have coredns; then return; fi
  log "building CoreDNS ${COREDNS_VERSION} without forward"
  # hack/node/coredns is its own module (so the project's go.mod never sees CoreDNS).
  cd "${here}/coredns"
  [[ "$(go list -m -f '{{.Version}}' github.com/coredns/coredns)" == "${COREDNS_VERSION}" ]] ||
    { log "hack/node/coredns/go.mod does not require CoreDNS ${COREDNS_VERSION}"; exit 1; }
  GOFLAGS=-mod=readonly go build -trimpath -ldflags "-s -w" -o "${NODE_BIN}/.coredns.tmp" . >&2
  mv "${NODE_BIN}/.coredns.tmp" "${NODE_BIN}/coredns"
}

# The helpers are the project's own code: rebuilt whenever a source is newer than the binaries.
# Images are packed by the repository's one image tool (hack/images), the one `make images` runs.
build_helpers() {
  local root
  root=$(cd "${here}/../.." && pwd)
  if have pause cri-sweep pki images && [[ -f "${NODE_IMAGES}/pause.tar" ]] &&
    [[ -z "$(find "${here}/helpers" "${root}/hack/images" "${root}/internal/images" -newer "${NODE_BIN}/images" -type f)" ]]; then return; fi
  log "building node helpers"
  (cd "${here}/helpers" && for b in pause cri-sweep pki; do
    GOFLAGS=-mod=readonly go build -trimpath -ldflags "-s -w" -o "${NODE_BIN}/.${b}.tmp" "./${b}" >&2
    mv "${NODE_BIN}/.${b}.tmp" "${NODE_BIN}/${b}"
  done)
  (cd "${root}" && go build -trimpath -o "${NODE_BIN}/.images.tmp" ./hack/images >&2)
  mv "${NODE_BIN}/.images.tmp" "${NODE_BIN}/images"
  mkdir -p "${NODE_IMAGES}"
  "${NODE_BIN}/images" rootfs -out "${NODE_IMAGES}/pause.tar" -tag "${PAUSE_IMAGE}" \
    -file "${NODE_BIN}/pause=/pause" -entrypoint '["/pause"]' -user 65535:65535 >&2
}

case "${what}" in
  kube) build_kube ;;
  etcd) build_etcd ;;
  coredns) build_coredns ;;
  helpers) build_helpers ;;
  all) build_helpers; build_etcd; build_coredns; build_kube ;;
  *) log "unknown part ${what}"; exit 2 ;;
esac
echo "${NODE_CACHE_DIR}"
