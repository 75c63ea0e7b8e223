#!/usr/bin/env bash
# Stops the node hack/node/up.sh started and leaves the host as up found it: only the PIDs up
# recorded (and the containerd shims of its own containerd) are signalled, every pod sandbox is
# removed through the CRI first, mounts under the state directory are unmounted, and the
# iptables chains, the bridge, the lo address, the cgroups and the sysctls are restored. Safe to
# run twice, or after a failed up. Exits non-zero if the host is not as it was.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/node/versions.sh
source "${here}/versions.sh"
# shellcheck source=hack/node/net.sh
source "${here}/net.sh"
S=${NODE_STATE}
C=${S}/containerd
[[ -d "${S}" ]] || { log "nothing to tear down under ${S}"; exit 0; }
problems=0

# stop NAME: TERM the recorded PID if it is still the process up started, wait, then KILL.
stop() {
  local name=$1 f="${S}/pids/$1" pid
  [[ -f "${f}" ]] || return 0
  pid=$(cat "${f}")
  # A recycled PID belongs to someone else: only a process whose argv names our binary or
  # state directory is ours.
  if kill -0 "${pid}" 2>/dev/null && { tr '\0' ' ' < "/proc/${pid}/cmdline"; } 2>/dev/null | grep -q -e "${S}" -e "${NODE_BIN}"; then
    kill -TERM "${pid}" 2>/dev/null
    local deadline=$((SECONDS + 30))
    while kill -0 "${pid}" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if kill -0 "${pid}" 2>/dev/null; then
      log "${name} (${pid}) ignored TERM for 30s; killing"
      kill -KILL "${pid}" 2>/dev/null
      while kill -0 "${pid}" 2>/dev/null; do sleep 0.1; done
    fi
  fi
  rm -f "${f}"
}

# The kubelet first, or it restarts what is being removed; then every sandbox through the CRI
# while containerd still runs.
stop kubelet
if [[ -f "${S}/pids/containerd" && -S "${C}/containerd.sock" ]]; then
  "${NODE_BIN}/cri-sweep" -endpoint "${C}/containerd.sock" -timeout 2m >&2 || { log "cri-sweep failed"; problems=1; }
fi
stop containerd
# Shims outlive containerd by design; ours name our containerd's socket in their argv.
for p in /proc/[0-9]*; do
  pid=${p#/proc/}
  if { tr '\0' ' ' < "${p}/cmdline"; } 2>/dev/null | grep -q -e "containerd-shim.*${C}/containerd.sock"; then
    log "stopping leftover shim ${pid}"
    kill -KILL "${pid}" 2>/dev/null
  fi
done
for name in coredns kube-proxy kube-scheduler kube-controller-manager kube-apiserver etcd; do
  stop "${name}"
done

# Mounts under the state directory (volumes, overlay snapshots, network namespaces), deepest
# first.
findmnt -rn -o TARGET | awk -v s="${S}" 'index($0, s) == 1' | sort -r | while read -r m; do
  umount "${m}" 2>/dev/null || umount -l "${m}" 2>/dev/null || { log "cannot unmount ${m}"; }
done
for ns in /var/run/netns/cni-*; do
  [[ -e "${ns}" ]] || continue
  # Only namespaces our sandboxes made: the CNI state names them.
  if grep -rqs "$(basename "${ns}")" "${S}/cni/ipam" "${C}/root" 2>/dev/null; then
    umount "${ns}" 2>/dev/null; rm -f "${ns}"
  fi
done

# Network: our bridge and address, then every iptables chain kube-proxy, the kubelet or up made.
ip link show "${BRIDGE}" >/dev/null 2>&1 && ip link del "${BRIDGE}"
if [[ -f "${S}/host/lo-address" ]]; then
  ip addr del "${NODE_IP}/32" dev lo 2>/dev/null
  rm -f "${S}/host/lo-address"
fi
ours='^(KUBE-|CNI-|RPNODE-)'
for cmd in iptables ip6tables; do
  for table in filter nat mangle raw; do
    "${cmd}" -t "${table}" -S 2>/dev/null | grep -E -- '^-A [A-Z]+ .*-j (KUBE-|CNI-|RPNODE-)' | grep -Ev -- '^-A (KUBE-|CNI-|RPNODE-)' |
      while read -r rule; do
        # -S quotes comments as a shell would: eval splits the rule as it was written.
        eval "${cmd} -w -t ${table} ${rule/#-A/-D}" 2>/dev/null
      done
    chains=$("${cmd}" -t "${table}" -S 2>/dev/null | awk '$1 == "-N" {print $2}' | grep -E "${ours}")
    for ch in ${chains}; do "${cmd}" -w -t "${table}" -F "${ch}" 2>/dev/null; done
    for ch in ${chains}; do "${cmd}" -w -t "${table}" -X "${ch}" 2>/dev/null; done
  done
  if [[ -f "${S}/host/${cmd}" ]]; then
    if ! diff <(sort "${S}/host/${cmd}") <(ipt_snapshot "${cmd}" | sort) > "${S}/host/${cmd}.diff"; then
      log "${cmd} rules differ from before up:"; cat "${S}/host/${cmd}.diff" >&2; problems=1
    fi
  fi
done
conntrack -D -s "${POD_CIDR}" >/dev/null 2>&1 || true

# The kubelet's cgroups (cgroupfs driver, cgroup v1): empty once every container is gone.
for ctl in /sys/fs/cgroup/*/; do
  [[ -d "${ctl}kubepods" ]] || continue
  find "${ctl}kubepods" -depth -type d -exec rmdir {} + 2>/dev/null
  [[ -d "${ctl}kubepods" ]] && { log "cgroup ${ctl}kubepods not empty"; problems=1; }
done

if [[ -f "${S}/host/sysctls" ]]; then
  while IFS='=' read -r k v; do
    p=$(sysctl_path "${k}")
    [[ -w "${p}" ]] || continue
    [[ "$(cat "${p}")" == "${v}" ]] || echo "${v}" > "${p}" 2>/dev/null || { log "cannot restore ${k}=${v}"; problems=1; }
  done < "${S}/host/sysctls"
fi

# Keep the logs for a post-mortem; drop the data.
rm -rf "${S}/etcd" "${C}" "${S}/kubelet" "${S}/pv" "${S}/cni" "${S}/pod-logs" "${S}/pki" "${S}/env" "${S}/pids"
if ((problems)); then log "down: the host is not fully restored (see above)"; exit 1; fi
log "down: stopped and restored"
