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
# Maps an empty 64 GiB image (64 KiB clusters) on the first disk, runs IOS
# (default 16384) random 4k writes at queue depth QD (default 32) with fio,
# and prints fio's IOPS, the write requests and merges the disk completed
# (/sys/block/DISK/stat, the data writes included), and, where kprobes can be
# set, how many writes map() allocated (qcow2_alloc_end_io) and how many went
# to a worker (qcow2_write_cluster), with the time spent in commit
# writeback.  A diagnostic, not a test: it asserts nothing.
set -eu

qd=${1:-32}
ios=${2:-16384}
disk=${QCOW2_DISKS%% *}
name=${disk##*/}
T=/sys/kernel/tracing

stat_w() { local f; read -r -a f < "/sys/block/$name/stat"; echo "${f[4]} ${f[5]}"; }

qemu-img create -q -f qcow2 -o cluster_size=65536 "$disk" 64G
dmsetup create alloc-req --table "0 $((64 << 21)) qcow2 $disk"
trap 'dmsetup remove alloc-req 2>/dev/null || true' EXIT

probes=0
[ -d "$T/events" ] || mount -t tracefs nodev "$T" 2>/dev/null || true
if [ -w "$T/kprobe_events" ]; then
	: > "$T/trace"
	echo 65536 > "$T/buffer_size_kb"
	probes=1
	for f in qcow2_write_cluster qcow2_alloc_end_io qcow2_cache_writeback; do
		echo "p:p_$f $f" >> "$T/kprobe_events" &&
		echo "r:r_$f $f" >> "$T/kprobe_events" || probes=0
	done
	[ "$probes" = 1 ] && echo 1 > "$T/events/kprobes/enable"
fi

read -r w0 m0 <<< "$(stat_w)"
iops=$(fio --name=w --filename=/dev/mapper/alloc-req --direct=1 --ioengine=libaio \
	--rw=randwrite --bs=4k --iodepth="$qd" --number_ios="$ios" --size=64G \
	--norandommap --randrepeat=1 --output-format=terse --terse-version=3 |
	awk -F';' '{print $49}')
read -r w1 m1 <<< "$(stat_w)"
echo "fio: $ios random 4k writes at QD$qd: $iops IOPS"
echo "disk $name: $((w1 - w0)) write requests completed, $((m1 - m0)) merged"

if [ "$probes" = 1 ]; then
	echo 0 > "$T/events/kprobes/enable"
	python3 - "$T/trace" <<'PYEOF'
import collections, re, sys
calls = collections.Counter()
start, total = {}, collections.defaultdict(float)
for line in open(sys.argv[1]):
    m = re.search(r'-(\d+)\s+\[\d+\].*?\s([\d.]+): ([pr])_(\w+):', line)
    if not m:
        continue
    pid, ts, kind, fn = m.group(1), float(m.group(2)), m.group(3), m.group(4)
    if kind == 'p':
        calls[fn] += 1
        start[(pid, fn)] = ts
    elif (pid, fn) in start:
        total[fn] += ts - start.pop((pid, fn))
print("allocated in map(): %d, written by a worker: %d" %
      (calls['qcow2_alloc_end_io'], calls['qcow2_write_cluster']))
print("commit writeback: %d calls, %.1f ms" %
      (calls['qcow2_cache_writeback'], total['qcow2_cache_writeback'] * 1000))
PYEOF
	echo > "$T/kprobe_events"
fi
