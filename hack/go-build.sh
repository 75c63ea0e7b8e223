#!/usr/bin/env bash
# go build with progress: a first build of the project compiles some 400 packages over a
# minute or two, silently. With -v, go names each package it compiles; this prints every 25th
# with a count, and every other line (errors, downloads) as it is. A cached build prints
# nothing extra. Usage: hack/go-build.sh [go build flags and packages]
set -euo pipefail
"${GO:-go}" build -v "$@" 2>&1 | awk '
	/^[^ :#]+$/ { n++; if (n % 25 == 0) { printf "  … %d packages compiled (%s)\n", n, $0; fflush() } next }
	{ print; fflush() }
	END { if (n >= 25) printf "  … %d packages compiled\n", n }
' >&2
