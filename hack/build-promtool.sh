#!/usr/bin/env bash
# Builds promtool from the Prometheus Go module, so the alert rules' unit tests
# (`promtool test rules`) run without a prebuilt download. Prints the path of the binary.
#
# The binary is cached per version outside the repository; a second run prints the path at once.
set -euo pipefail

PROMETHEUS_VERSION=${PROMETHEUS_VERSION:-v0.316.0}
out=${PROMTOOL_BIN_DIR:-${XDG_CACHE_HOME:-${HOME}/.cache}/redpacketset/promtool/${PROMETHEUS_VERSION}}

if [[ -x "${out}/promtool" ]]; then
  echo "${out}/promtool"
  exit 0
fi
mkdir -p "${out}"
log() { echo "build-promtool: $*" >&2; }
export GOFLAGS=-mod=mod GOTOOLCHAIN=local

work=$(mktemp -d)
trap 'rm -rf "${work}"' EXIT
log "building promtool from github.com/prometheus/prometheus ${PROMETHEUS_VERSION} (first time: a few minutes)"
cd "${work}"
go mod init redpacket.dev/promtool >/dev/null 2>&1
go mod edit -require="github.com/prometheus/prometheus@${PROMETHEUS_VERSION}"
cat > tools.go <<'GO'
//go:build tools

package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
GO
go mod tidy >&2
# Build to a temporary name and rename, so an interrupted build never leaves a broken binary
# that the cache check above would trust.
go build -o "${out}/promtool.tmp" github.com/prometheus/prometheus/cmd/promtool >&2
mv "${out}/promtool.tmp" "${out}/promtool"
echo "${out}/promtool"
