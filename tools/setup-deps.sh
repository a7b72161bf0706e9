#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Install everything dm-qcow2 needs to build and test, from Debian's archive.
# Idempotent and quick when everything is already installed.
set -eu

PKGS="build-essential bc flex bison libelf-dev kmod cpio busybox-static
      linux-image-amd64 linux-headers-amd64
      linux-image-6.12-amd64 linux-headers-6.12-amd64
      qemu-system-x86 qemu-utils dmsetup libdevmapper-dev udev
      fio e2fsprogs xfsprogs sparse pkg-config zstd zlib1g-dev libzstd-dev
      strace util-linux xxd python3 initramfs-tools
      clang libclang-rt-14-dev
      dkms dpkg-dev lintian bash-completion debootstrap"

missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' ||
		missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ]; then
	echo "setup-deps: missing packages:$missing (run as root to install)" >&2
	exit 1
fi
echo "setup-deps: installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Kernel images are only booted in test VMs: no bootloader or initramfs needed.
apt-get install -y -qq --no-install-recommends $missing >/dev/null
