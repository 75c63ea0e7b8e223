#!/usr/bin/env bash
# Builds the envtest control plane (kube-apiserver and etcd) from Go modules, because
# setup-envtest downloads prebuilt binaries from a host this project's machines cannot reach.
# Prints the directory that holds the binaries (use it as KUBEBUILDER_ASSETS).
#
# The binaries are cached per version; a second run prints the directory at once.
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-v1.37.2}
STAGING_VERSION=${STAGING_VERSION:-v0.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}
root=$(cd "$(dirname "$0")/.." && pwd)
out=${ENVTEST_BIN_DIR:-${root}/bin/envtest/${KUBE_VERSION}}

if [[ -x "${out}/kube-apiserver" && -x "${out}/etcd" ]]; then
  echo "${out}"
  exit 0
fi
mkdir -p "${out}"
log() { echo "build-envtest: $*" >&2; }
export GOFLAGS=-mod=mod GOTOOLCHAIN=local

work=$(mktemp -d)
trap 'rm -rf "${work}"' EXIT

# kube-apiserver: k8s.io/kubernetes refers to its staging modules as ./staging/...; outside its
# own repository every one of them must be replaced by its published release.
if [[ ! -x "${out}/kube-apiserver" ]]; then
  log "building kube-apiserver ${KUBE_VERSION} (first time: several minutes)"
  mkdir -p "${work}/kube" && cd "${work}/kube"
  go mod init redpacket.dev/envtest-kube >/dev/null 2>&1
  gomod=$(go mod download -json "k8s.io/kubernetes@${KUBE_VERSION}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  [[ -f "${gomod}" ]] || { log "cannot read go.mod of k8s.io/kubernetes@${KUBE_VERSION}"; exit 1; }
  args=(-require="k8s.io/kubernetes@${KUBE_VERSION}")
  while read -r mod; do
    args+=(-replace="${mod}=${mod}@${STAGING_VERSION}")
  done < <(sed -n 's#^[[:space:]]*\(k8s.io/[^[:space:]]*\) => ./staging/.*#\1#p' "${gomod}")
  go mod edit "${args[@]}"
  cat > tools.go <<'GO'
//go:build tools

package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver/app"
GO
  go mod tidy >&2
  go build -o "${out}/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver >&2
fi

if [[ ! -x "${out}/etcd" ]]; then
  log "building etcd ${ETCD_VERSION}"
  mkdir -p "${work}/etcd" && cd "${work}/etcd"
  go mod init redpacket.dev/envtest-etcd >/dev/null 2>&1
  go mod edit -require="go.etcd.io/etcd/server/v3@${ETCD_VERSION}"
  cat > tools.go <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3/etcdmain"
GO
  go mod tidy >&2
  go build -o "${out}/etcd" go.etcd.io/etcd/server/v3 >&2
fi
echo "${out}"
