#!/usr/bin/env bash
# Install what the local cluster's real node runs besides the Go binaries (kubelet, kube-proxy and CoreDNS come
# from the pinned Go modules, see `make binaries`): containerd, runc and the CNI plugins, iptables and conntrack
# (kube-proxy), and a static busybox (the node's pause and test images are made from it, nothing is pulled).
# Debian bookworm's packages, pinned to exact versions: the quick, signed way on this machine, and the versions
# the real node was checked with (containerd 1.6.20 speaks CRI v1 to kubelet v1.36). Needs root (apt-get);
# does nothing when every package is already at its pinned version.
set -euo pipefail

PACKAGES=(
    "containerd=1.6.20~ds1-1+deb12u3"
    "runc=1.1.5+ds1-1+deb12u1"
    "containernetworking-plugins=1.1.1+ds1-3+b5"
    "iptables=1.8.9-2"
    "conntrack=1:1.4.7-1+b2"
    "busybox-static=1:1.35.0-4+deb12u1+b1"
)

missing=()
for pinned in "${PACKAGES[@]}"; do
    name=${pinned%%=*}
    have=$(dpkg-query -W -f='${Status} ${Version}' "$name" 2>/dev/null || true)
    [ "$have" = "install ok installed ${pinned#*=}" ] || missing+=("$pinned")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "error: installing ${missing[*]} needs root (apt-get); run: sudo $0" >&2
    echo "       or run the cluster kwok-only: REAL_NODE=0 make demo / REAL_NODE=0 make up" >&2
    exit 1
fi
apt_get() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }
apt_get update -qq
DEBIAN_FRONTEND=noninteractive apt_get install -y -qq --no-install-recommends "${missing[@]}"
