#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# alloc-requests.sh - where the requests of allocating writes go (guest side).
#
# Run in a test VM with the module loaded and one scratch disk of at least
# 70 GiB (its contents are destroyed):
#
#   tools/testing/vm/run-vm.sh --kver KVER --module build/KVER/dm-qcow2.ko \
#       --disk 80G --mem 2048 -- tools/bench/alloc-requests.sh [QD [IOS]]
#
# or, without a disk, on null_blk (memory_backed=1, as `make bench`):
#
#   tools/testing/vm/run-vm.sh --kver KVER --module build/KVER/dm-qcow2.ko \
#       --mem 3072 -- env ALLOC_DEV=nullblk tools/bench/alloc-requests.sh
#
# ALLOC_EXT_L2=on makes the image with extended L2 entries; ALLOC_CLUSTER=BYTES
# sets its cluster size (default 65536: an L2 table maps 512 MiB; 4096 makes
# nearly every write of the run need a new L2 table).  ALLOC_FLUSHER=1
# runs a second fio job meanwhile, which writes 4k blocks at queue depth 1
# and fsyncs after each, so that commits of the target run while the
# allocating writes go on (fio's own fsync=N would wait for the writes in
# flight first); its IOPS are printed too.  ALLOC_FLUSH_MS=MS puts dm-delay
# between the disk and the target, delaying flushes by MS milliseconds (a
# device whose cache flush is slow; null_blk then gets a write cache of
# 1 GiB), and ALLOC_WRITE_MS=MS with it delays writes too (a device with
# slow writes: data and metadata alike).
#
# Maps an empty 64 GiB image (64 KiB clusters by default) on the first disk, runs IOS
# (default 16384) random 4k writes at queue depth QD (default 32) with fio,
# and prints fio's IOPS, the write requests and merges the disk completed
# (/sys/block/DISK/stat, the data writes included), and the change of each
# counter of the target's stats message (qcow2.rst, "Messages"): writes
# allocated in map() or by a worker, zero fills, zeroing ahead, commits and
# their time.  A diagnostic, not a test: it asserts nothing.
set -eu

qd=${1:-32}
ios=${2:-16384}
if [ "${ALLOC_DEV:-disk}" = nullblk ]; then
	rmmod null_blk 2>/dev/null || true
	# With flushes to delay it needs a volatile write cache: a device
	# without one (and dm devices over it) completes flushes at once.
	modprobe null_blk nr_devices=1 gb=100 bs=512 memory_backed=1 discard=1 \
		${ALLOC_FLUSH_MS:+cache_size=1024}
	disk=/dev/nullb0
else
	disk=${QCOW2_DISKS%% *}
fi
name=${disk##*/}
dev=$disk

stat_w() { local f; read -r -a f < "/sys/block/$name/stat"; echo "${f[4]} ${f[5]}"; }

qemu-img create -q -f qcow2 -o "cluster_size=${ALLOC_CLUSTER:-65536},extended_l2=${ALLOC_EXT_L2:-off}" "$disk" 64G
trap 'dmsetup remove alloc-req 2>/dev/null || true; dmsetup remove alloc-req-delay 2>/dev/null || true' EXIT
if [ -n "${ALLOC_FLUSH_MS:-}" ]; then
	dmsetup create alloc-req-delay --table \
		"0 $(blockdev --getsz "$disk") delay $disk 0 0 $disk 0 ${ALLOC_WRITE_MS:-0} $disk 0 $ALLOC_FLUSH_MS"
	dev=/dev/mapper/alloc-req-delay
fi
dmsetup create alloc-req --table "0 $((64 << 21)) qcow2 $dev"

stats() { dmsetup message alloc-req 0 stats; }

stats > /tmp/alloc-req.stats0
read -r w0 m0 <<< "$(stat_w)"
flusher=()
[ "${ALLOC_FLUSHER:-0}" = 1 ] &&
	flusher=(--name=f --rw=randwrite --iodepth=1 --fsync=1 --time_based --runtime=3600)
fio --filename=/dev/mapper/alloc-req --direct=1 --ioengine=libaio --bs=4k --size=64G \
	--norandommap --randrepeat=1 --exitall --output-format=terse --terse-version=3 \
	--name=w --rw=randwrite --iodepth="$qd" --number_ios="$ios" "${flusher[@]}" \
	> /tmp/alloc-req.fio
read -r w1 m1 <<< "$(stat_w)"
iops=$(awk -F';' '$3 == "w" { print $49 }' /tmp/alloc-req.fio)
echo "fio: $ios random 4k writes at QD$qd${ALLOC_FLUSH_MS:+ (flushes delayed $ALLOC_FLUSH_MS ms)}${ALLOC_WRITE_MS:+ (writes $ALLOC_WRITE_MS ms)}: $iops IOPS"
[ ${#flusher[@]} = 0 ] ||
	echo "fio: meanwhile 4k writes, each followed by fsync: $(awk -F';' '$3 == "f" { print $49 }' /tmp/alloc-req.fio) IOPS"
echo "disk $name: $((w1 - w0)) write requests completed, $((m1 - m0)) merged"

stats > /tmp/alloc-req.stats1
echo "stats message, change during the run:"
awk 'NR == FNR { v[$1] = $2; next } { printf "  %-20s %d\n", $1, $2 - v[$1] }' \
	/tmp/alloc-req.stats0 /tmp/alloc-req.stats1
