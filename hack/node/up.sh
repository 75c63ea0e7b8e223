#!/usr/bin/env bash
# Starts a real single-node Kubernetes on this machine: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, containerd (Debian), kubelet, kube-proxy and CoreDNS,
# all built by hack/node/build.sh. Every daemon is started here, its PID recorded under
# ${NODE_STATE}/pids; hack/node/down.sh stops exactly those and restores the host.
#
# The network rule: nothing leaves the machine. The node address is a /32 on lo; pods sit on a
# bridge without masquerading and with routes only to the pod CIDR, the service CIDR and the
# node address (no default route); a FORWARD guard rejects any other pod-sourced traffic; CoreDNS
# has no upstream; the kubelet's resolv.conf names 127.0.0.1; containerd's proxy is a dead port
# on loopback.
#
# On success prints the path of an env file (KUBECONFIG, CONTAINERD_ADDRESS, ...).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/node/versions.sh
source "${here}/versions.sh"
# shellcheck source=hack/node/net.sh
source "${here}/net.sh"
S=${NODE_STATE}
B=${NODE_BIN}
PV_COUNT=${PV_COUNT:-8}
trap 'log "failed at line ${LINENO}: ${BASH_COMMAND}"' ERR

# Preflight: say exactly why this machine cannot run a node, never half-start.
[[ "$(id -u)" == 0 ]] || die "must run as root (the kubelet, containerd and iptables need it)"
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl coredns pki cri-sweep; do
  [[ -x "${B}/${b}" ]] || die "${B}/${b} missing: run hack/node/build.sh"
done
[[ -f "${NODE_IMAGES}/pause.tar" ]] || die "pause image missing: run hack/node/build.sh"
for b in containerd ctr runc iptables ip6tables conntrack ip nsenter; do
  command -v "${b}" >/dev/null || die "${b} missing: run hack/node/install-packages.sh"
done
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] || die "CNI plugins missing: run hack/node/install-packages.sh"
[[ -d /sys/fs/cgroup ]] || die "no cgroup filesystem at /sys/fs/cgroup"
[[ -d /proc/sys/net/bridge ]] || die "br_netfilter is not loaded: bridged pod traffic would bypass iptables (modprobe br_netfilter)"
if [[ -d "${S}/pids" ]] && compgen -G "${S}/pids/*" >/dev/null; then
  die "a node is already up (or was not torn down) under ${S}: run hack/node/down.sh"
fi
if iptables-save 2>/dev/null | grep -qE '^:(KUBE-|RPNODE-)'; then
  die "iptables already has KUBE-/RPNODE- chains: another kubelet or kube-proxy manages this host (down.sh removes those chains)"
fi
if ip -o addr show dev lo | grep -qw "${NODE_IP}"; then
  die "${NODE_IP} is already on lo: another node harness is running (or was not torn down)"
fi

mkdir -p "${S}"/{pids,logs,host,etc,cni/net.d,cni/ipam,pv}
rm -rf "${S}/pki"

# --- host state, saved before anything changes it -------------------------------------------
: > "${S}/host/sysctls"
for k in "${HOST_SYSCTLS[@]}"; do
  p=$(sysctl_path "${k}")
  if [[ -r "${p}" ]]; then echo "${k}=$(cat "${p}")" >> "${S}/host/sysctls"; fi
done
ipt_snapshot iptables > "${S}/host/iptables"
ipt_snapshot ip6tables > "${S}/host/ip6tables"

# A failed start stops what it started and restores the host.
trap 'rc=$?; if [[ ${rc} != 0 ]]; then log "up failed (exit ${rc}); tearing down"; "${here}/down.sh" >&2 || true; fi' EXIT

ip addr add "${NODE_IP}/32" dev lo
touch "${S}/host/lo-address"
echo 1 > /proc/sys/net/ipv4/ip_forward
echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables

# The FORWARD guard: pod-sourced traffic may reach pods, services (already DNATed to pods by
# the time it is forwarded) and the node; everything else is rejected at once.
iptables -N "${GUARD_CHAIN}"
iptables -A "${GUARD_CHAIN}" -s "${POD_CIDR}" -d "${POD_CIDR}" -j RETURN
iptables -A "${GUARD_CHAIN}" -s "${POD_CIDR}" -d "${SERVICE_CIDR}" -j RETURN
iptables -A "${GUARD_CHAIN}" -s "${POD_CIDR}" -d "${NODE_IP}/32" -j RETURN
iptables -A "${GUARD_CHAIN}" -s "${POD_CIDR}" -j REJECT --reject-with icmp-net-prohibited
iptables -I FORWARD 1 -j "${GUARD_CHAIN}"
ip6tables -N "${GUARD_CHAIN}"
ip6tables -A "${GUARD_CHAIN}" -i "${BRIDGE}" -j REJECT
ip6tables -I FORWARD 1 -j "${GUARD_CHAIN}"

"${B}/pki" -dir "${S}/pki" -node-ip "${NODE_IP}" -service-ip "${KUBE_SERVICE_IP}" -node "${NODE_NAME}"
P=${S}/pki
export KUBECONFIG=${P}/admin.kubeconfig
kubectl() { "${B}/kubectl" "$@"; }

# start NAME CMD...: a new session, its own log, its PID recorded for down.sh.
start() {
  local name=$1; shift
  setsid "$@" > "${S}/logs/${name}.log" 2>&1 < /dev/null &
  echo $! > "${S}/pids/${name}"
}
# wait_for WHAT SECONDS CMD...: poll CMD until it succeeds, or fail naming WHAT and its log.
wait_for() {
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "${what} not ready after ${secs}s; last lines of its log:"
      tail -n 30 "${S}/logs/${what}.log" >&2 || true
      return 1
    fi
    if [[ -f "${S}/pids/${what}" ]] && ! kill -0 "$(cat "${S}/pids/${what}")" 2>/dev/null; then
      log "${what} exited; last lines of its log:"
      tail -n 30 "${S}/logs/${what}.log" >&2 || true
      return 1
    fi
    sleep 0.5
  done
}

# --- control plane ---------------------------------------------------------------------------
start etcd "${B}/etcd" --name node --data-dir "${S}/etcd" \
  --listen-client-urls "http://127.0.0.1:${ETCD_PORT}" --advertise-client-urls "http://127.0.0.1:${ETCD_PORT}" \
  --listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
  --initial-cluster "node=http://127.0.0.1:${ETCD_PEER_PORT}" \
  --unsafe-no-fsync --quota-backend-bytes 2147483648
wait_for etcd 60 curl -fsS "http://127.0.0.1:${ETCD_PORT}/health"

start kube-apiserver "${B}/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:${ETCD_PORT}" \
  --bind-address "${NODE_IP}" --advertise-address "${NODE_IP}" --secure-port 6443 \
  --service-cluster-ip-range "${SERVICE_CIDR}" \
  --client-ca-file "${P}/ca.crt" --tls-cert-file "${P}/apiserver.crt" --tls-private-key-file "${P}/apiserver.key" \
  --kubelet-client-certificate "${P}/apiserver-kubelet-client.crt" --kubelet-client-key "${P}/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority "${P}/ca.crt" --kubelet-preferred-address-types InternalIP \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "${P}/sa.pub" --service-account-signing-key-file "${P}/sa.key" \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --requestheader-client-ca-file "${P}/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
  --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
  --requestheader-extra-headers-prefix X-Remote-Extra- \
  --proxy-client-cert-file "${P}/front-proxy-client.crt" --proxy-client-key-file "${P}/front-proxy-client.key" \
  --allow-privileged=true --profiling=false --enable-priority-and-fairness=false
wait_for kube-apiserver 120 "${B}/kubectl" get --raw /readyz

start kube-controller-manager "${B}/kube-controller-manager" \
  --kubeconfig "${P}/controller-manager.kubeconfig" \
  --authentication-kubeconfig "${P}/controller-manager.kubeconfig" --authorization-kubeconfig "${P}/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials \
  --service-account-private-key-file "${P}/sa.key" --root-ca-file "${P}/ca.crt" \
  --cluster-signing-cert-file "${P}/ca.crt" --cluster-signing-key-file "${P}/ca.key" \
  --requestheader-client-ca-file "${P}/front-proxy-ca.crt" --client-ca-file "${P}/ca.crt" \
  --service-cluster-ip-range "${SERVICE_CIDR}" --allocate-node-cidrs=false --profiling=false
start kube-scheduler "${B}/kube-scheduler" \
  --kubeconfig "${P}/scheduler.kubeconfig" \
  --authentication-kubeconfig "${P}/scheduler.kubeconfig" --authorization-kubeconfig "${P}/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false --profiling=false

# --- containerd ------------------------------------------------------------------------------
C=${S}/containerd
mkdir -p "${C}"
cat > "${S}/etc/containerd.toml" <<EOF
version = 2
root = "${C}/root"
state = "${C}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "${C}/containerd.sock"
[ttrpc]
  address = "${C}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "${C}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${PAUSE_IMAGE}"
  # This machine may not lower oom_score_adj (no CAP_SYS_RESOURCE in the bounding set).
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    discard_unpacked_layers = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "${C}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${S}/cni/net.d"
EOF
# No ipMasq (pod traffic is never rewritten to leave as the host), no default route: only the
# service CIDR and the node address via the bridge, the pod CIDR being on-link.
cat > "${S}/cni/net.d/10-rpnode.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "rpnode",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${BRIDGE}",
      "isGateway": true,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "${S}/cni/ipam",
        "ranges": [[{"subnet": "${POD_CIDR}", "gateway": "${POD_GW}"}]],
        "routes": [{"dst": "${SERVICE_CIDR}"}, {"dst": "${NODE_IP}/32"}]
      }
    }
  ]
}
EOF
HTTP_PROXY=${DEAD_PROXY} HTTPS_PROXY=${DEAD_PROXY} http_proxy=${DEAD_PROXY} https_proxy=${DEAD_PROXY} NO_PROXY= no_proxy= \
  start containerd containerd --config "${S}/etc/containerd.toml"
ctr() { command ctr --address "${C}/containerd.sock" "$@"; }
wait_for containerd 60 ctr version
ctr -n k8s.io images import "${NODE_IMAGES}/pause.tar" >&2
# Every image the cluster runs was imported by hand: keep them from garbage collection.
ctr -n k8s.io images label "${PAUSE_IMAGE}" io.cri-containerd.pinned=pinned >/dev/null

# --- kubelet ---------------------------------------------------------------------------------
echo "nameserver 127.0.0.1" > "${S}/etc/resolv.conf"
cat > "${S}/etc/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${P}/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: ${P}/kubelet-serving.crt
tlsPrivateKeyFile: ${P}/kubelet-serving.key
containerRuntimeEndpoint: unix://${C}/containerd.sock
# Kubernetes >= 1.35 refuses cgroup v1 unless told; there is no systemd to delegate to.
failCgroupV1: false
cgroupDriver: cgroupfs
# The VM denies a negative oom_score_adj.
oomScoreAdj: 0
failSwapOn: false
clusterDomain: cluster.local
clusterDNS: [${DNS_IP}]
# dnsPolicy: Default pods get this file: nothing listens on a pod's own 127.0.0.1:53, so a
# name outside the cluster fails at once instead of reaching the host's resolver.
resolvConf: ${S}/etc/resolv.conf
podLogsDir: ${S}/pod-logs
# Images are imported by hand and can never be pulled again: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "200Mi", nodefs.available: "2%", imagefs.available: "2%", nodefs.inodesFree: "2%"}
maxPods: 60
serializeImagePulls: false
EOF
mkdir -p "${S}/pod-logs"
start kubelet "${B}/kubelet" --config "${S}/etc/kubelet.yaml" --kubeconfig "${P}/kubelet.kubeconfig" \
  --root-dir "${S}/kubelet" --cert-dir "${S}/kubelet/pki" --hostname-override "${NODE_NAME}" \
  --node-ip "${NODE_IP}" --node-labels "topology.kubernetes.io/zone=${NODE_ZONE}"

# --- kube-proxy ------------------------------------------------------------------------------
cat > "${S}/etc/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: ${P}/kube-proxy.kubeconfig}
mode: iptables
hostnameOverride: ${NODE_NAME}
clusterCIDR: ${POD_CIDR}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# NodePorts only on the node's own /32, never on the host's outward interface.
nodePortAddresses: ["${NODE_IP}/32"]
iptables: {localhostNodePorts: false}
# Leave the host's conntrack settings alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
start kube-proxy "${B}/kube-proxy" --config "${S}/etc/kube-proxy.yaml"

wait_for kubelet 120 "${B}/kubectl" wait --for=condition=Ready "node/${NODE_NAME}" --timeout=2s

# --- cluster DNS: CoreDNS on the node address, a selector-less Service in front ------------
kubectl apply --server-side -f - >&2 <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "redpacketset-node:coredns"}
rules:
- apiGroups: [""]
  resources: [services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "redpacketset-node:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "redpacketset-node:coredns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "redpacketset-node:coredns"}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: ${DNS_IP}
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-node
  namespace: kube-system
  labels: {kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: redpacketset-node}
addressType: IPv4
endpoints:
- addresses: [${NODE_IP}]
  conditions: {ready: true}
ports:
- {name: dns, port: 53, protocol: UDP}
- {name: dns-tcp, port: 53, protocol: TCP}
EOF
# A short cache: a fresh StatefulSet pod's headless name must resolve soon after it is Ready.
cat > "${S}/etc/Corefile" <<EOF
cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind ${NODE_IP}
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig ${P}/coredns.kubeconfig
        pods insecure
        ttl 5
    }
    cache 5
    loadbalance
}
.:53 {
    bind ${NODE_IP}
    errors
    health ${NODE_IP}:18080
    ready ${NODE_IP}:18181
    # No forward: a name outside the cluster has no answer here, and nowhere else to go.
    template ANY ANY {
        rcode NXDOMAIN
    }
}
EOF
start coredns "${B}/coredns" -conf "${S}/etc/Corefile"
wait_for coredns 60 curl -fsS "http://${NODE_IP}:18181/ready"

# --- storage: pre-created hostPath volumes behind a no-provisioner class ---------------------
{
  cat <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
EOF
  for i in $(seq 1 "${PV_COUNT}"); do
    # hostPath ignores fsGroup: the directory must be writable by whatever uid the pod runs as.
    mkdir -p "${S}/pv/pv${i}" && chmod 0777 "${S}/pv/pv${i}"
    cat <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: node-pv${i}}
spec:
  capacity: {storage: 50Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: local
  hostPath: {path: ${S}/pv/pv${i}, type: Directory}
EOF
  done
} | kubectl apply --server-side -f - >&2

wait_for kube-proxy 60 curl -fsS http://127.0.0.1:10256/healthz
cat > "${S}/env" <<EOF
export KUBECONFIG=${P}/admin.kubeconfig
export CONTAINERD_ADDRESS=${C}/containerd.sock
export NODE_STATE=${S}
export NODE_BIN=${B}
export NODE_IMAGES=${NODE_IMAGES}
export NODE_IP=${NODE_IP}
export NODE_POD_CIDR=${POD_CIDR}
export NODE_SERVICE_CIDR=${SERVICE_CIDR}
export NODE_ZONE=${NODE_ZONE}
EOF
trap - EXIT
log "up: $(kubectl get node "${NODE_NAME}" --no-headers 2>/dev/null)"
echo "${S}/env"
