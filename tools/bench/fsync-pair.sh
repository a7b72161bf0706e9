#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# fsync-pair.sh - allocating 4k writes, each followed by an fsync, through
# dm-linear, this target and (optionally) a second build of it, in turn in
# one VM (guest side).  A diagnostic, not a test: it asserts nothing.
#
#   tools/testing/vm/run-vm.sh --kver KVER --module build/KVER/dm-qcow2.ko \
#       --mem 3072 [--env OTHER_KO=PATH] [--env LAZY=1] [--env ROUNDS="1 2 3"] \
#       -- tools/bench/fsync-pair.sh
#
# Each run gets a fresh null_blk device made through configfs with a
# volatile write cache (cache_size=64 MiB, memory-backed; FUA supported on
# 6.12), so that every flush reaches the backend, and a fresh empty 64 GiB
# image (64 KiB clusters): fio's psync job of N (default 2048) random 4k
# writes with --fsync=1 allocates a cluster with each.  OTHER_KO is a build
# of the module renamed to target "qcow2b" (obj-m in Kbuild and .name in
# dm-qcow2-target.c, in a scratch copy of the tree), loaded next to this
# one; LAZY=1 adds runs with lazy_refcounts.  Prints per run fio's IOPS,
# write and fsync latency, the requests the device completed per write and
# the target's commit counters.
set -u

N=${N:-2048}
D=/sys/kernel/config/nullb/nullb2
DEV=/dev/nullb2
SECTORS=$((64 << 21))

modprobe null_blk nr_devices=0 || exit 1
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
[ -d /sys/kernel/config/nullb ] || { echo "no null_blk configfs"; exit 1; }

dev_up()
{
	local a

	mkdir "$D" || return 1
	for a in size=66560 blocksize=512 memory_backed=1 cache_size=64 discard=1 power=1; do
		echo "${a#*=}" >"$D/${a%%=*}" || return 1
	done
	udevadm settle
}

dev_down()
{
	echo 0 >"$D/power"
	rmdir "$D"
}

# run TARGET [TABLE_ARGS...]: one fio run through a fresh mapping
run()
{
	local target=$1 s0 s1
	shift

	dev_up || exit 1
	if [ "$target" = linear ]; then
		dmsetup create fsp --table "0 $SECTORS linear $DEV 0" || exit 1
	else
		qemu-img create -q -f qcow2 -o cluster_size=65536 "$DEV" 64G &&
			dmsetup create fsp --table "0 $SECTORS $target $DEV $*" || exit 1
	fi
	read -r -a s0 <"/sys/block/nullb2/stat"
	fio --name=f --filename=/dev/mapper/fsp --direct=1 --ioengine=psync \
		--rw=randwrite --bs=4k --fsync=1 --number_ios="$N" --size=64G \
		--norandommap --randrepeat=1 --output-format=json >/tmp/fsp.json || exit 1
	read -r -a s1 <"/sys/block/nullb2/stat"
	python3 - "$target $*" "$N" "$((s1[4] - s0[4]))" "$((s1[6] - s0[6]))" \
		"$((s1[15] - s0[15]))" <<'PY'
import json, sys
name, n, w, sec, fl = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:])
j = json.load(open("/tmp/fsp.json"))["jobs"][0]
wr, sy = j["write"], j["sync"]["lat_ns"]
p = wr["clat_ns"]["percentile"]
print("%s: %.0f IOPS; write us mean %.0f p50 %.0f p99 %.0f; fsync us mean %.0f p50 %.0f;"
      " per write: %.2f requests, %.1f KiB, %.2f flushes"
      % (name, wr["iops"], wr["clat_ns"]["mean"] / 1e3, p["50.000000"] / 1e3,
         p["99.000000"] / 1e3, sy["mean"] / 1e3,
         sy.get("percentile", {}).get("50.000000", 0) / 1e3, w / n, sec / 2 / n, fl / n))
PY
	[ "$target" != linear ] &&
		dmsetup message fsp 0 stats | grep -E '^(flushes|commits|commit_usecs|commit_fua) ' | tr '\n' ' ' && echo
	dmsetup remove fsp
	dev_down
}

if [ -n "${OTHER_KO:-}" ]; then
	insmod "$OTHER_KO" || exit 1
fi
for r in ${ROUNDS:-1 2}; do
	echo "# round $r"
	run linear
	run qcow2
	[ -n "${OTHER_KO:-}" ] && run qcow2b
	[ -n "${LAZY:-}" ] && run qcow2 1 lazy_refcounts
	[ -n "${LAZY:-}" ] && [ -n "${OTHER_KO:-}" ] && run qcow2b 1 lazy_refcounts
done
exit 0
