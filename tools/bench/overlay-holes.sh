#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# overlay-holes.sh - 4k writes into an overlay where its backing file has
# nothing (guest side).
#
# Run in a test VM with the module loaded and two scratch disks of at least
# 70 GiB (their contents are destroyed):
#
#   tools/testing/vm/run-vm.sh --kver KVER --module build/KVER/dm-qcow2.ko \
#       --disk 80G --disk 80G --mem 2048 -- tools/bench/overlay-holes.sh
#
# Makes an empty 64 GiB base image (64 KiB clusters) on the second disk and
# an overlay over it on the first, maps the overlay, and runs 4096 random
# 4k writes at queue depth 1 into the first half and 4096 at queue depth 32
# into the second, with fio.  Prints fio's IOPS and the change of the
# target's counters that say how the new clusters were written: in map()
# or by a worker, copied or zero-filled.  A diagnostic, not a test: it
# asserts nothing.
set -eu

disk=${QCOW2_DISKS%% *}
base=${QCOW2_DISKS#* }
base=${base%% *}

qemu-img create -q -f qcow2 -o cluster_size=65536 "$base" 64G
qemu-img create -q -f qcow2 -o cluster_size=65536 -b "$base" -F qcow2 "$disk" 64G
dmsetup create overlay-holes --table "0 $((64 << 21)) qcow2 $disk 3 backing qcow2 $base"
trap 'dmsetup remove overlay-holes 2>/dev/null || true' EXIT

for qd in 1 32; do
	dmsetup message overlay-holes 0 stats > /tmp/overlay-holes.stats0
	iops=$(fio --name=w --filename=/dev/mapper/overlay-holes --direct=1 --ioengine=libaio \
		--rw=randwrite --bs=4k --iodepth="$qd" --number_ios=4096 \
		--offset=$((qd == 1 ? 0 : 32))G --size=32G --norandommap --randrepeat=1 \
		--output-format=terse --terse-version=3 | awk -F';' '{print $49}')
	dmsetup message overlay-holes 0 stats > /tmp/overlay-holes.stats1
	echo "QD$qd: $iops IOPS; $(awk 'NR == FNR { v[$1] = $2; next }
		$1 ~ /allocs|copies|fills|deferred/ { printf "%s %d ", $1, $2 - v[$1] }' \
		/tmp/overlay-holes.stats0 /tmp/overlay-holes.stats1)"
done
