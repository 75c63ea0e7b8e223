#!/usr/bin/env bash
# Installs the Debian packages the single-node test cluster runs or is built with: containerd,
# runc, the CNI plugins, iptables, conntrack, iproute2, util-linux (nsenter), curl, and mmdebstrap
# (the database images' rootfs). Idempotent; runs apt-get only when something is missing.
# Services the packages would start are held back (policy-rc.d): hack/node/up.sh starts its own
# containerd with its own configuration and stops exactly that process.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

declare -A probe=(
  [containerd]=/usr/bin/containerd
  [runc]=/usr/sbin/runc
  [containernetworking-plugins]=/usr/lib/cni/bridge
  [iptables]=/usr/sbin/iptables
  [conntrack]=/usr/sbin/conntrack
  [iproute2]=/usr/sbin/ip
  [util-linux]=/usr/bin/nsenter
  [mmdebstrap]=/usr/bin/mmdebstrap
  [curl]=/usr/bin/curl
)
missing=()
for pkg in "${!probe[@]}"; do
  [[ -x "${probe[$pkg]}" ]] || missing+=("${pkg}")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "node-packages: all installed" >&2
  exit 0
fi
sudo=""
[[ "$(id -u)" -eq 0 ]] || sudo=sudo
policy=/usr/sbin/policy-rc.d
backup=""
if [[ -e "${policy}" ]]; then backup=$(mktemp); $sudo cp -p "${policy}" "${backup}"; fi
restore() { if [[ -n "${backup}" ]]; then $sudo cp -p "${backup}" "${policy}"; rm -f "${backup}"; else $sudo rm -f "${policy}"; fi; }
trap restore EXIT
printf '#!/bin/sh\nexit 101\n' | $sudo tee "${policy}" >/dev/null
$sudo chmod 0755 "${policy}"
echo "node-packages: installing ${missing[*]}" >&2
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
  $sudo systemctl disable --now containerd >/dev/null 2>&1 || true
fi
for pkg in "${!probe[@]}"; do
  [[ -x "${probe[$pkg]}" ]] || { echo "node-packages: ${probe[$pkg]} still missing after installing ${pkg}" >&2; exit 1; }
done
