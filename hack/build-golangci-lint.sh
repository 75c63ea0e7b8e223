#!/usr/bin/env bash
# Builds golangci-lint from its Go module, so `make lint` needs no prebuilt download. Prints the
# path of the binary.
#
# The binary is cached per version outside the repository; a second run prints the path at once.
set -euo pipefail

GOLANGCI_LINT_VERSION=${GOLANGCI_LINT_VERSION:-v2.15.0}
out=${GOLANGCI_LINT_BIN_DIR:-${XDG_CACHE_HOME:-${HOME}/.cache}/redpacketset/golangci-lint/${GOLANGCI_LINT_VERSION}}

if [[ -x "${out}/golangci-lint" ]]; then
  echo "${out}/golangci-lint"
  exit 0
fi
mkdir -p "${out}"
echo "build-golangci-lint: building golangci-lint ${GOLANGCI_LINT_VERSION} from its module (first time: a few minutes)" >&2
export GOTOOLCHAIN=local
work=$(mktemp -d)
trap 'rm -rf "${work}"' EXIT
# go install module@version builds with the module's own go.mod, as its release does. Install
# into a temporary directory and rename, so an interrupted build never leaves a broken binary
# that the cache check above would trust.
GOBIN="${work}" GOFLAGS= go install "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@${GOLANGCI_LINT_VERSION}" >&2
mv "${work}/golangci-lint" "${out}/golangci-lint"
echo "${out}/golangci-lint"
