#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# first-touch.sh - what the first write to guest memory costs a point
# (guest side; the reason for warm_memory() in bench-guest.sh).
#
# Run in a test VM with the module loaded:
#
#   tools/testing/vm/run-vm.sh --kver KVER --module build/KVER/dm-qcow2.ko \
#       --mem 3072 -- tools/bench/first-touch.sh
#
# On a memory-backed null_blk (which keeps the data in guest memory) it
# runs, in this order, 16,384 random 4k writes at QD1 into an empty 64 GiB
# image through dm-qcow2 (each allocates a 64 KiB cluster), 16,384 random
# 64 KiB writes at QD1 through dm-linear over 3 GiB, and both again, the
# device discarded before each, and prints fio's IOPS of each run.  Under
# TCG the first run stores into guest memory never written before, whose
# pages cost the QEMU process a host page fault each.  A diagnostic, not a
# test: it asserts nothing.
set -u

dev=/dev/nullb0
modprobe null_blk nr_devices=1 gb=1100 bs=512 memory_backed=1 discard=1 || exit 1
udevadm settle 2>/dev/null
grep -E '^(MemFree|MemAvailable):' /proc/meminfo

iops() { awk -F';' '{ print $49 }'; }	# write IOPS of fio's terse output v3

run_qcow2() {
	blkdiscard "$dev"
	qemu-img create -q -f qcow2 -o cluster_size=65536 "$dev" 64G || return 1
	dmsetup create first-touch --table "0 $((64 << 21)) qcow2 $dev" || return 1
	echo "dm-qcow2, 4k allocating writes QD1: $(fio --name=w --filename=/dev/mapper/first-touch \
		--direct=1 --ioengine=libaio --rw=randwrite --bs=4k --iodepth=1 --number_ios=16384 \
		--size=64G --norandommap --randrepeat=1 --output-format=terse --terse-version=3 | iops) IOPS"
	dmsetup remove first-touch
}

run_raw() {
	blkdiscard "$dev"
	dmsetup create first-touch --table "0 $(blockdev --getsz "$dev") linear $dev 0" || return 1
	echo "dm-linear, 64k writes QD1: $(fio --name=w --filename=/dev/mapper/first-touch \
		--direct=1 --ioengine=libaio --rw=randwrite --bs=64k --iodepth=1 --number_ios=16384 \
		--size=3G --norandommap --randrepeat=1 --output-format=terse --terse-version=3 | iops) IOPS"
	dmsetup remove first-touch
}

run_qcow2; run_raw; run_qcow2; run_raw
