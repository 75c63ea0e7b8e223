# RedPacket SET — build, generate and test.
# `make up` runs a complete local SET; `make test` runs every test (installing what it needs).

SHELL := /usr/bin/env bash -o pipefail
GO ?= go
CONTROLLER_GEN := $(GO) tool controller-gen
export GOTOOLCHAIN ?= local

.PHONY: all
all: build

##@ Generate

.PHONY: generate
generate: go-check ## Deepcopy code from the API types.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./api/..."

.PHONY: manifests
manifests: go-check ## CRDs and RBAC from markers.
	$(CONTROLLER_GEN) rbac:roleName=redpacket-operator crd:allowDangerousTypes=true \
		paths="./api/..." paths="./controllers/..." \
		output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac
	@if [ -d charts/redpacket-operator/templates ]; then hack/sync-chart-crds.sh; fi
	hack/sync-monitoring.sh

.PHONY: check-generate
check-generate: generate manifests ## Fail when generated files are not up to date.
	@git diff --exit-code -- api config charts || { echo "generated files are stale: run 'make generate manifests' and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- api config charts)" || { git status --porcelain -- api config charts; echo "generated files are untracked: commit them"; exit 1; }

##@ Run

LOCALSET_MANIFEST ?= config/samples/redpacket_v1alpha1_redpacketset.yaml
LOCALSET_DATA ?= .localset

# Built, then exec'd rather than `go run`: `go run` exits 1 after any ^C however cleanly the
# program stopped, and its first compile is a silent minute. localset then takes the
# terminal's foreground for itself, so a ^C reaches neither make nor a `| tee`: make exits
# with localset's status, 0 after a clean stop.
.PHONY: up
up: go-check deps ## The main job: a complete local SET (per cell MariaDB, memcached, servers) plus the gateway. Ctrl-C stops it.
	@echo "make up: building localset (the first build compiles the project: a minute or two)…"
	@GO=$(GO) hack/go-build.sh -o bin/localset ./cmd/localset
	exec bin/localset up -f $(LOCALSET_MANIFEST) -data $(LOCALSET_DATA)

.PHONY: rpbench
rpbench: go-check ## Festival load against the running local SET, then the conservation audit.
	@echo "make rpbench: building rpbench…"
	@GO=$(GO) hack/go-build.sh -o bin/rpbench ./cmd/rpbench
	exec bin/rpbench -localset $(LOCALSET_DATA) $(RPBENCH_FLAGS)

# Every target that runs Go depends on this, so a missing Go says what to do instead of
# "go: command not found" half way through.
.PHONY: go-check
go-check:
	@command -v $(GO) >/dev/null 2>&1 || { echo "'$(GO)' is not on PATH: install Go 1.26 (e.g. at /usr/local/go) and run  export PATH=/usr/local/go/bin:\$$PATH" >&2; exit 127; }

.PHONY: rpbench-locks
rpbench-locks: go-check deps ## Lock strategies across concurrency levels: docs/lock-strategies.{md,png}.
	$(GO) run ./cmd/rpbench locks

##@ Build

# The version of the project's images, set only in the VERSION file: the manifests, the chart
# and the CRD defaults name it (hack/images/main_test.go checks they agree).
VERSION := $(shell cat VERSION)
IMAGES_DIR ?= bin/images
REGISTRY ?= ghcr.io/redpacketset

.PHONY: build
build: go-check ## Build every binary into bin/.
	$(GO) build -o bin/ ./cmd/...

.PHONY: images
images: go-check ## Image tarballs of operator, cellserver and gateway in bin/images (static, user 65532, no shell).
	$(GO) run ./hack/images project -version $(VERSION) -registry $(REGISTRY) -out $(IMAGES_DIR)

.PHONY: images-debian
images-debian: ## mariadb:10.11 and memcached:1.6 stand-ins from Debian packages for a registry-less test cluster (root, mmdebstrap).
	hack/node/install-packages.sh
	hack/node/build.sh helpers >/dev/null
	IMAGES_OUT=$(IMAGES_DIR) MARIADB_IMAGE=docker.io/library/mariadb:10.11 MEMCACHED_IMAGE=docker.io/library/memcached:1.6 hack/node/images.sh base

.PHONY: vet
vet: go-check ## go vet over every package.
	$(GO) vet ./...

.PHONY: lint
lint: go-check ## golangci-lint (.golangci.yml), built from its Go module and cached per version.
	"$$(hack/build-golangci-lint.sh)" run ./...

##@ Test

.PHONY: deps
deps: ## Install MariaDB and memcached from Debian packages when missing.
	hack/install-deps.sh

.PHONY: envtest
envtest: go-check ## Build kube-apiserver and etcd from Go modules (cached in bin/envtest).
	@hack/build-envtest.sh >/dev/null

.PHONY: promtool
promtool: go-check ## Build promtool from the Prometheus Go module (cached per version outside the repo).
	@hack/build-promtool.sh >/dev/null

# test/node runs on its own: it brings up a whole cluster on the machine's cores. It needs root
# and a Linux kernel that can run a kubelet; without them it fails saying why.
NODE_TEST_PKG := ./test/node

# test/node runs after every other package, not beside them: sharing two cores with the
# end-to-end suites would make its timings (pods Ready, a failover, a mask's cool-down) a
# measure of the neighbours.
.PHONY: test
test: go-check deps envtest promtool check-generate vet ## Run every test: unit, real MariaDB/memcached, envtest, end to end, real node.
	KUBEBUILDER_ASSETS="$$(hack/build-envtest.sh)" $(GO) test -race -count=1 -timeout 30m $$($(GO) list ./... | grep -v '/test/node$$')
	$(MAKE) node-test

##@ Real node

.PHONY: node-build
node-build: go-check ## Build the single-node cluster and its images (cached by version in ~/.cache/redpacketset/node).
	hack/node/install-packages.sh
	hack/node/build.sh >/dev/null
	hack/node/images.sh >/dev/null

.PHONY: node-test
node-test: node-build ## The operator on a real kubelet: Helm install, a 2-cell set Available, load and audit (needs root).
	$(GO) test -count=1 -timeout 60m -v $(NODE_TEST_PKG)

.PHONY: node-up
node-up: node-build ## Start the single-node cluster; prints the env file to source (KUBECONFIG, ...).
	hack/node/up.sh

.PHONY: node-down
node-down: ## Stop the single-node cluster and restore the host.
	hack/node/down.sh

BENCHTIME ?= 5s

.PHONY: e2e
e2e: go-check deps ## End to end only: a 2-cell local SET, 10,000 opens through the gateway, audit, restart, crash.
	$(GO) test -count=1 -timeout 10m ./test/e2e/

.PHONY: bench
bench: go-check deps ## The hot-packet lock-strategy benchmark on real MariaDB (BENCHTIME=2s for a short run).
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) ./internal/lockbench/baseline/

.PHONY: help
help:
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z0-9_-]+:.*?##/ { printf "  %-16s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)
