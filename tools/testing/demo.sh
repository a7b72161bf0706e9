#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# demo.sh [KVER]: the README's demo.  Builds the module and qcow2setup and,
# in a test VM, makes an ext4 file system in a new qcow2 image, opens a
# qcow2 overlay over it with qcow2setup, mounts it through the target,
# writes files, closes it and shows what QEMU makes of the result.
set -eu

top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
kver=${1:-$(tools/testing/kvers.sh | awk '{print $NF}')}
make -s KVER="$kver" modules
make -s -C tools/qcow2setup
exec tools/testing/vm/run-vm.sh --kver "$kver" --module "build/$kver/dm-qcow2.ko" \
	--timeout 600 -- tools/testing/demo-guest.sh
