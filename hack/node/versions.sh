# Versions and paths of the single-node test cluster, in one place (sourced by hack/node/*.sh).
# shellcheck shell=bash
KUBE_VERSION=${KUBE_VERSION:-v1.37.2}
STAGING_VERSION=${STAGING_VERSION:-v0.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}
COREDNS_VERSION=${COREDNS_VERSION:-v1.15.0}
PAUSE_IMAGE=${PAUSE_IMAGE:-localhost/redpacketset/pause:3.10}

# The cache is keyed by every version in it: a change of any one rebuilds into a new directory.
NODE_CACHE=${NODE_CACHE:-${HOME}/.cache/redpacketset/node}
NODE_CACHE_DIR=${NODE_CACHE}/${KUBE_VERSION}-etcd${ETCD_VERSION}-coredns${COREDNS_VERSION}
NODE_BIN=${NODE_CACHE_DIR}/bin
NODE_IMAGES=${NODE_CACHE_DIR}/images
