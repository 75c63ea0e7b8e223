# Addresses and host-state helpers shared by hack/node/up.sh and down.sh.
# shellcheck shell=bash

# The state directory holds everything a running cluster writes: data, logs, PIDs, certificates.
NODE_STATE=${NODE_STATE:-/tmp/redpacketset-node}
NODE_NAME=node1
# A /32 on lo: the kubelet refuses 127.0.0.0/8 as node IP, and an address on lo is delivered
# locally, never routed off the machine.
NODE_IP=10.250.0.1
POD_CIDR=10.251.0.0/24
POD_GW=10.251.0.1
SERVICE_CIDR=10.252.0.0/24
KUBE_SERVICE_IP=10.252.0.1
DNS_IP=10.252.0.10
NODE_ZONE=${NODE_ZONE:-zone-a}
BRIDGE=rpnode0
ETCD_PORT=22379
ETCD_PEER_PORT=22380
# Anything that must not leave the machine is sent here instead: a proxy address on loopback
# where nothing listens, so an accidental image pull fails at once.
DEAD_PROXY=http://127.0.0.1:9
GUARD_CHAIN=RPNODE-FORWARD

# Kernel settings the kubelet, kube-proxy or the bridge change; saved before up, restored at down.
HOST_SYSCTLS=(
  net.ipv4.ip_forward
  net.bridge.bridge-nf-call-iptables
  net.bridge.bridge-nf-call-ip6tables
  net.ipv4.conf.all.route_localnet
  vm.overcommit_memory
  vm.panic_on_oom
  kernel.panic
  kernel.panic_on_oops
  kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes
  net.netfilter.nf_conntrack_max
  net.netfilter.nf_conntrack_tcp_timeout_established
  net.netfilter.nf_conntrack_tcp_timeout_close_wait
)

sysctl_path() { echo "/proc/sys/${1//.//}"; }

log() { echo "node: $*" >&2; }
die() { echo "node: $*" >&2; exit 1; }

# Every chain, rule and non-default policy of every table, one per line: what "the host as it
# was" is compared by (an absent table and one with only ACCEPT policies are the same host).
ipt_snapshot() {
  local cmd=$1 table
  for table in filter nat mangle raw; do
    { "${cmd}" -w -t "${table}" -S 2>/dev/null || true; } | { grep -v -- "^-P [A-Z]* ACCEPT$" || true; } | sed "s/^/${table} /"
  done
}
