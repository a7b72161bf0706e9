#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_write_zero_ahead.sh - partial writes to new clusters on a device
# whose free space holds garbage.
#
# Without extended L2, the rest of a cluster that a write allocates must read
# as zeros.  The target either writes those zeros with the data or, on a
# device with write-zeroes, zeroes free clusters ahead of the allocator and
# then writes only the data (see "Writing" in qcow2.rst).  Both are wrong in
# a way no other test can see when the device's free space already reads as
# zeros, so here it does not: the first 512 MiB of the first spare disk are
# filled with 0xa5 bytes before `qemu-img create` puts a 576 MiB image
# (64 KiB clusters: two L2 tables) on it.  Then:
#   a) two fio jobs at iodepth 16 write one 4 KiB block into each of 2048
#      new clusters, at offset 0 and at offset 36 KiB of the cluster (a fill
#      before and after the data); the whole device must equal the
#      expected content (the blocks, zeros elsewhere), and the target's
#      stats must show write-zeroes of free clusters ahead of the allocator
#      that average at least 1 MiB (zero_ahead, zero_ahead_clusters) and
#      data-only writes into zeroed clusters (zeroed_allocs; zero_ahead_waits,
#      allocations that met a write-zeroes in flight, is printed); then one
#      4 KiB write at 512 MiB + 36 KiB, under the second L2 table: the new
#      table must come from the clusters zeroed ahead (zeroed_tables), not
#      be zeroed again, and read as zeros but for that block.  No
#      tracepoint is enabled: that patches kernel text (sched_switch for the
#      comm cache), and TCG has let the other vCPU run into the int3 of such
#      a patch ("Oops: int3" in __schedule, a panic unrelated to the module);
#   b) suspend, overwrite the free space after the image's end with 0xa5
#      again (userspace may write the device while it is suspended: what was
#      zeroed before may not be zero after), resume, and write 2048 more
#      clusters the same way: the device must equal the expected content;
#   c) after removal, `qemu-img check` exits 0 and QEMU reads the same.
# Skipped without a spare disk or when it has no write-zeroes.

. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/qcow2_common.sh"
. "$(dirname "$0")/qcow2_write_common.sh"

_qcow2_init fio cmp python3
DISK=$(_disk 1) || exit
M=$((1 << 20))
K=1024
VS=$((576 * M))
DM=${QCOW2_DM_PREFIX}za
DISK_SIZE=$(blockdev --getsize64 "$DISK")
[ "$DISK_SIZE" -ge $((512 * M)) ] || _skip "$DISK is too small ($DISK_SIZE bytes)"
DISK_SYS=/sys/class/block/$(basename "$(realpath "$DISK")")
wz=$(cat "$DISK_SYS/queue/write_zeroes_max_bytes" 2>/dev/null || echo 0)
[ "$wz" -gt 0 ] || _skip "$DISK has no write-zeroes (write_zeroes_max_bytes $wz)"
EXP=$WORK/expected.raw

ktap_header
ktap_plan 5

# _garbage OFF LEN   write 0xa5 bytes over [OFF, OFF + LEN) of the disk, then
# drop the disk's page cache: the target's bios bypass it, so a page left
# there would be stale once the target writes the range
_garbage()
{
	python3 - "$DISK" "$1" "$2" <<'PYEOF'
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
off, n = int(sys.argv[2]), int(sys.argv[3])
chunk = b"\xa5" * (1 << 20)
while n > 0:
    k = min(n, len(chunk))
    os.pwrite(fd, chunk[:k], off)
    off += k
    n -= k
os.fsync(fd)
os.close(fd)
PYEOF
	_drop_cache "$DISK"
}

# _jobs BASE   fio jobs: 4k at +0 of each of the 1024 clusters of
# [BASE, BASE + 64M) (pattern 0x11) and at +36k of each cluster of the next
# 64 MiB (pattern 0x22), sequential with 60k holes, 16 in flight each
_jobs()
{
	cat <<EOF
[global]
filename=$MAP_DEV
ioengine=libaio
iodepth=16
direct=1
rw=write:60k
bs=4k
number_ios=1024
size=$((64 * M))
[head]
offset=$1
buffer_pattern=0x11
[mid]
offset=$(($1 + 64 * M + 36 * K))
buffer_pattern=0x22
EOF
}

# _expect BASE   add what _jobs BASE writes to the expected image
_expect()
{
	python3 - "$EXP" "$1" "$M" "$K" <<'PYEOF'
import os, sys
path, base, M, K = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
fd = os.open(path, os.O_WRONLY)
for c in range(1024):
    os.pwrite(fd, b"\x11" * 4096, base + c * 64 * K)
    os.pwrite(fd, b"\x22" * 4096, base + 64 * M + c * 64 * K + 36 * K)
os.close(fd)
PYEOF
}

# _cmp_second WHAT   compare [512 MiB, 576 MiB), under the second L2 table
_cmp_second()
{
	cmp -s -i $((512 * M)) -n $((64 * M)) "$MAP_DEV" "$EXP" && return 0
	_qdiag "$1: [512 MiB, 576 MiB) differs from the expected content"
	return 1
}

# _write BASE WHAT   run _jobs BASE, update the expectation, compare the
# first 256 MiB (of the rest, a) writes one block; a) and b) compare
# [512 MiB, 576 MiB) with _cmp_second, c) all of it)
_write()
{
	local rc=0
	_jobs "$1" >"$WORK/jobs.fio"
	_wguard 400 "fio ($2)" fio --output="$WORK/fio.out" "$WORK/jobs.fio" >/dev/null ||
		{ grep -Ei 'error|err=' "$WORK/fio.out" | head -5 | sed 's/^/# /'; rc=1; }
	_expect "$1"
	_check_wstatus "$DM" rw || rc=1
	if ! cmp -s -n $((256 * M)) "$MAP_DEV" "$EXP"; then
		_qdiag "$2: the device differs from the expected content:" \
			"$(cmp -l -n $((256 * M)) "$MAP_DEV" "$EXP" 2>/dev/null | head -3)"
		rc=1
	fi
	return $rc
}

_map()
{
	_dm_create "$DM" "$(_qcow2_table "$DISK" $((VS / 512)))" ||
		{ _qdiag "dmsetup create failed"; return 1; }
	MAP_DEV=/dev/mapper/$DM
	[ -b "$MAP_DEV" ] || dmsetup mknodes "$DM"
	_check_wstatus "$DM" rw
}

# --- map ----------------------------------------------------------------------
rc=0
_garbage 0 $((512 * M)) || { _qdiag "cannot fill $DISK"; rc=1; }
qemu-img create -q -f qcow2 -o cluster_size=64k "$DISK" "$VS" ||
	{ _qdiag "qemu-img create on $DISK failed"; rc=1; }
# the close after qemu-img's writes makes udev probe the disk: let it finish
# before the target opens the disk, not read it (through the page cache)
# while mapped
_wsync_udev
truncate -s "$VS" "$EXP" || rc=1
[ $rc -eq 0 ] && { _map || rc=1; }
_result "image on $DISK over 0xa5 garbage, mapped read-write" $rc
[ $rc -eq 0 ] || ktap_finish

# --- a) ----------------------------------------------------------------------
rc=0
_qmark
_write 0 "a)" || rc=1
# the second L2 table, taken while zeroing ahead runs
head -c 4096 /dev/zero | tr '\0' '\063' >"$WORK/block"
blk=$(((512 * M + 36 * K) / 4096))
dd if="$WORK/block" of="$EXP" bs=4k seek=$blk conv=notrunc status=none || rc=1
_wguard 60 "dd at 512 MiB" dd if="$WORK/block" of="$MAP_DEV" bs=4k seek=$blk \
	oflag=direct conv=notrunc status=none || rc=1
_cmp_second "a)" || rc=1
stats=$(dmsetup message "$DM" 0 stats | tr '\n' ' ')
_qdiag "stats: $stats"
za=$(_wstat "$DM" zeroed_allocs)
[ "${za:-0}" -gt 0 ] || { _qdiag "no write went into a cluster zeroed ahead"; rc=1; }
zt=$(_wstat "$DM" zeroed_tables)
[ "${zt:-0}" -eq 1 ] ||
	{ _qdiag "the second L2 table was not put in a zeroed cluster (zeroed_tables ${zt:-?})"; rc=1; }
zah=$(_wstat "$DM" zero_ahead)
zac=$(_wstat "$DM" zero_ahead_clusters)
# 16 clusters of 64 KiB: 1 MiB per write-zeroes on average
if [ "${zah:-0}" -eq 0 ] || [ "${zac:-0}" -lt $((16 * zah)) ]; then
	_qdiag "no zeroing ahead in requests of >= 1 MiB (zero_ahead ${zah:-?}, clusters ${zac:-?})"
	rc=1
fi
_check_dmesg_clean || rc=1
_result "a) 4k writes to 2048 new clusters (fill after; before and after), a new L2 table" $rc

# --- b) ----------------------------------------------------------------------
rc=0
_wguard 120 "dmsetup suspend" dmsetup suspend "$DM" || rc=1
# the end offset must come from the disk, not from pages of the disk's page
# cache read before the target wrote the metadata (a stale refcount block put
# the end at the first L2 table and the garbage over it): _wimg_end drops them
end=$(_wimg_end "$DISK") || end=""
# a) allocated 2048 clusters: the end is past 128 MiB
if [ -n "$end" ] && [ "$end" -le $((128 * M)) ]; then
	_qdiag "image end offset $end is below what a) allocated: stale metadata read"
	rc=1
elif [ -n "$end" ] && [ "$end" -lt $((512 * M)) ]; then
	_qdiag "image end offset $end: garbage from there to 512 MiB"
	_garbage "$end" $((512 * M - end)) || rc=1
else
	_qdiag "cannot get the image end offset ('$end')"
	rc=1
fi
dmsetup resume "$DM" || { _qdiag "resume failed"; rc=1; }
_wsync_udev
_write $((128 * M)) "b)" || rc=1
_cmp_second "b) after resume" || rc=1
_result "b) free space overwritten while suspended: 2048 more clusters" $rc

# --- c) ----------------------------------------------------------------------
rc=0
_wunmap "$DM"
_wcheck "$DISK" || rc=1
_wheader_clean "$DISK" || rc=1
_wconvert "$DISK" "$WORK/out.raw" && _wcompare "$WORK/out.raw" "$EXP" || rc=1
rm -f "$WORK/out.raw"
_result "c) removed: qemu-img check exit 0, QEMU reads what was written" $rc

rc=0
_check_dmesg_clean || rc=1
_result "no kernel warnings" $rc

ktap_finish
