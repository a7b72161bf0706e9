#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_cache_shrink.sh - the metadata cache gives clean slices back under
# memory pressure, and only those.
#
# A 256 MiB image with 4 KiB clusters and preallocated metadata (128 L2
# slices), data written by QEMU in 64 places, is mapped read-write with a
# 4 MiB cache (1024 slots).  The device is always read with O_DIRECT (its
# page cache would answer otherwise).  Then:
#   1. the whole device is read and equals QEMU's view: every L2 slice is
#      cached; a discard and writes leave dirty slices (no flush);
#   2. `echo 2 > /proc/sys/vm/drop_caches` runs the shrinkers: the cache
#      keeps only its dirty slices (cache_used falls to dirty_slices, which
#      do not change), the stats count the freed ones (cache_shrunk);
#   3. the whole device is read again: it still equals the reference, and
#      the L2 slices were read again (cache misses);
#   4. fio writes random 4 KiB blocks with verification while a loop drops
#      the caches every 100 ms (lookups, allocations and commits racing the
#      shrinker); fio must find every block it wrote;
#   5. after removal `qemu-img check` exits 0 and QEMU reads what the
#      device read last.
# The debug kernel (KASAN) is the one that sees a slice freed in use.

. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/qcow2_common.sh"
. "$(dirname "$0")/qcow2_write_common.sh"

_qcow2_init cmp dd blkdiscard fio python3

M=$((1 << 20))
K=1024
VS=$((256 * M))
IMG=$WORK/img.qcow2
REF=$WORK/ref.raw
DM=${QCOW2_DM_PREFIX}shr
DROP=/proc/sys/vm/drop_caches
[ -w "$DROP" ] || _skip "$DROP is not writable"

ktap_header
ktap_plan 6

# _drop   run the shrinkers (slab objects only: 2)
_drop()
{
	echo 2 >"$DROP"
}

# --- 1 ------------------------------------------------------------------
rc=0
_mkimg "$IMG" $VS cluster_size=4k,preallocation=metadata || rc=1
cmds=()
for i in $(seq 0 63); do
	cmds+=("write -q -P $((i + 1)) $((i * 4 * M + i * 12 * K)) $((20 * K))")
done
_qio "$IMG" "${cmds[@]}" || rc=1
_wconvert "$IMG" "$REF" || rc=1
_wroom "$IMG" $VS || rc=1
if [ $rc -eq 0 ] && _wmap "$DM" "$IMG" cache_size:$((4 * M)); then
	_wcompare "$MAP_DEV" "$REF" || { _qdiag "the device differs from QEMU's view"; rc=1; }
	# a discard frees clusters (L2 and refcount slices dirty), then a
	# write into the discarded range allocates again
	blkdiscard -o $((64 * M)) -l $M "$MAP_DEV" || { _qdiag "blkdiscard failed"; rc=1; }
	dd if=/dev/zero of="$REF" bs=64k seek=1024 count=16 conv=notrunc status=none
	dd if="$REF" of="$MAP_DEV" bs=4k skip=$((4 * 1024)) seek=$((64 * 256 + 64)) count=64 \
		oflag=direct status=none || { _qdiag "write failed"; rc=1; }
	dd if="$REF" of="$REF" bs=4k skip=$((4 * 1024)) seek=$((64 * 256 + 64)) count=64 \
		conv=notrunc status=none
	if _check_wstatus "$DM" rw; then
		_qdiag "status: $WS_LINE"
		[ "$WS_USED" -ge 128 ] ||
			{ _qdiag "only $WS_USED slices cached after reading every cluster"; rc=1; }
		[ "$WS_DIRTY" -gt 0 ] || { _qdiag "no dirty slices after a discard"; rc=1; }
		U1=$WS_USED D1=$WS_DIRTY
	else
		rc=1
	fi
else
	rc=1
fi
_result "whole device read, discard and writes without flush" $rc
[ $rc -eq 0 ] || ktap_finish

# --- 2 ------------------------------------------------------------------
rc=0
s0=$(_wstat "$DM" cache_shrunk)
_drop
s1=$(_wstat "$DM" cache_shrunk)
if _check_wstatus "$DM" rw; then
	_qdiag "status after drop_caches: $WS_LINE; cache_shrunk ${s0:-?} -> ${s1:-?}"
	[ "$WS_DIRTY" -eq "$D1" ] ||
		{ _qdiag "dirty slices $D1 -> $WS_DIRTY: the shrinker touched dirty slices"; rc=1; }
	[ "$WS_USED" -eq "$WS_DIRTY" ] ||
		{ _qdiag "$WS_USED slices cached, $WS_DIRTY dirty: clean slices kept"; rc=1; }
	if [ -z "$s0" ] || [ -z "$s1" ] || [ $((s1 - s0)) -ne $((U1 - WS_USED)) ]; then
		_qdiag "cache_shrunk ${s0:-?} -> ${s1:-?}, cache_used $U1 -> $WS_USED"
		rc=1
	fi
	MISSES=$WS_MISSES
else
	rc=1
fi
_result "drop_caches frees the clean slices, keeps the dirty ones" $rc

# --- 3 ------------------------------------------------------------------
rc=0
_wcompare "$MAP_DEV" "$REF" ||
	{ _qdiag "the device differs from the reference after the drop"; rc=1; }
if _check_wstatus "$DM" rw; then
	[ $((WS_MISSES - MISSES)) -ge 120 ] ||
		{ _qdiag "cache misses $MISSES -> $WS_MISSES: the L2 slices were not read again"; rc=1; }
else
	rc=1
fi
_result "the device reads the same, its metadata read again" $rc

# --- 4 ------------------------------------------------------------------
rc=0
_qmark
(
	while :; do
		_drop
		sleep 0.1
	done
) &
dropper=$!
_wguard 600 "fio" fio --name=shrink --filename="$MAP_DEV" --ioengine=libaio --direct=1 \
	--rw=randwrite --bs=4k --iodepth=16 --offset=$((128 * M)) --size=$((64 * M)) \
	--number_ios=4096 --verify=crc32c --verify_backlog=256 --verify_state_save=0 --fsync=512 \
	--output="$WORK/fio.out" || { _wdiag_file "$WORK/fio.out" | tail -15; rc=1; }
kill "$dropper" 2>/dev/null
wait "$dropper" 2>/dev/null
s2=$(_wstat "$DM" cache_shrunk)
_qdiag "cache_shrunk ${s1:-?} -> ${s2:-?} during fio"
[ "${s2:-0}" -gt "${s1:-0}" ] || { _qdiag "no slice was freed during fio"; rc=1; }
_check_wstatus "$DM" rw || rc=1
_check_dmesg_clean || rc=1
_result "fio write+verify while drop_caches runs every 100 ms" $rc

# --- 5 ------------------------------------------------------------------
rc=0
dd if="$MAP_DEV" of="$WORK/dev.raw" bs=1M iflag=direct status=none ||
	{ _qdiag "cannot read the device"; rc=1; }
_wunmap "$DM"
_wcheck "$IMG" || rc=1
_wconvert "$IMG" "$WORK/out.raw" && _wcompare "$WORK/out.raw" "$WORK/dev.raw" || rc=1
# what fio did not write is still the reference
cmp -n $((128 * M)) "$WORK/out.raw" "$REF" ||
	{ _qdiag "QEMU reads other data below the fio range"; rc=1; }
rm -f "$WORK/out.raw" "$WORK/dev.raw"
_result "removed: qemu-img check exit 0, QEMU reads what the device read" $rc

rc=0
_check_dmesg_clean || rc=1
_result "no kernel warnings" $rc

ktap_finish
