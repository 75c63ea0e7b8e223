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
generate: ## Deepcopy code from the API types.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./api/..."

.PHONY: manifests
manifests: ## CRDs and RBAC from markers.
	$(CONTROLLER_GEN) rbac:roleName=redpacket-operator crd:allowDangerousTypes=true \
		paths="./api/..." paths="./controllers/..." \
		output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac
	@if [ -d charts/redpacket-operator/templates ]; then hack/sync-chart-crds.sh; fi

.PHONY: check-generate
check-generate: generate manifests ## Fail when generated files are not up to date.
	@git diff --exit-code -- api config charts || { echo "generated files are stale: run 'make generate manifests' and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- api config charts)" || { git status --porcelain -- api config charts; echo "generated files are untracked: commit them"; exit 1; }

##@ Build

.PHONY: build
build: ## Build every binary into bin/.
	$(GO) build -o bin/ ./cmd/...

.PHONY: vet
vet:
	$(GO) vet ./...

##@ Test

.PHONY: deps
deps: ## Install MariaDB and memcached from Debian packages when missing.
	hack/install-deps.sh

.PHONY: envtest
envtest: ## Build kube-apiserver and etcd from Go modules (cached in bin/envtest).
	@hack/build-envtest.sh >/dev/null

.PHONY: test
test: deps envtest check-generate vet ## Run every test: unit, real MariaDB/memcached, envtest, end to end.
	KUBEBUILDER_ASSETS="$$(hack/build-envtest.sh)" $(GO) test -race -count=1 -timeout 30m ./...

.PHONY: bench
bench: deps ## The lock-strategy benchmark on real MariaDB.
	$(GO) test -run '^$$' -bench . -benchtime 5s ./cellserver/bench/

.PHONY: help
help:
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*?##/ { printf "  %-16s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)
