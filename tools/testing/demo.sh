#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# demo.sh [KVER]: the README's demo.  Builds the module and, in a test VM,
# maps a qcow2 overlay over a qcow2 base holding an ext4 file system, mounts
# it through the target and shows what the target and QEMU see.
set -eu

top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
kver=${1:-$(tools/testing/kvers.sh | awk '{print $NF}')}
make -s KVER="$kver" modules
exec tools/testing/vm/run-vm.sh --kver "$kver" --module "build/$kver/dm-qcow2.ko" \
	--timeout 600 -- tools/testing/demo-guest.sh
