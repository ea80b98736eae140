#!/usr/bin/env bash
# Install the OCI image builder `make images` uses on a machine without a Docker engine: buildah (vfs storage,
# chroot isolation: no daemon, no overlay mounts, no user namespaces needed) and debootstrap (the base image's
# Debian root filesystem is made from Debian's own packages, since no container registry is reachable here).
# Pinned to Debian bookworm's versions; a CI job runs this once as root before `make images`.
set -euo pipefail

BUILDAH_VERSION=1.28.2+ds1-3+deb12u1+b3
DEBOOTSTRAP_VERSION=1.0.128+nmu2+deb12u2

if command -v buildah >/dev/null && command -v debootstrap >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "error: installing buildah and debootstrap needs root (apt-get); run: sudo $0" >&2
    exit 1
fi
apt_get() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }
apt_get update -qq
DEBIAN_FRONTEND=noninteractive apt_get install -y -qq --no-install-recommends \
    "buildah=${BUILDAH_VERSION}" "debootstrap=${DEBOOTSTRAP_VERSION}"
