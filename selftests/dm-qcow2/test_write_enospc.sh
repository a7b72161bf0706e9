#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_write_enospc.sh - a writable mapping whose image device is too small.
#
# A 64 MiB image (64 KiB clusters) lives on a loop device of only 2 MiB.
# 1 MiB is written, then an 8 MiB O_DIRECT write runs out of space:
#   - dd fails with "No space left on device" (ENOSPC, not EIO);
#   - the status line ends with "no_space", the mode stays "rw", a dm event
#     fired and the kernel log says the image device is full;
#   - everything written before, and every block dd reported as written
#     before the failure, reads back intact;
#   - allocated clusters can still be overwritten in place while full;
#   - after a flush the on-disk metadata is consistent (qemu-img check -U
#     exits 0 or 3, never 2) and QEMU sees what the device shows;
#   - after growing the device (truncate + losetup -c, then suspend / reload
#     the same table / resume) "no_space" is gone and the 8 MiB write
#     succeeds; at the end the device equals the reference, and after
#     removal `qemu-img check` exits 0 and `qemu-img convert` equals it.
# A second image runs out of space on a loop device of only 320 KiB (no
# room for the first L2 table) and is removed while full: qemu-img check
# must still exit 0.  A third (512-byte clusters, refcount_bits=64) runs out
# of space exactly where its refcount table must grow.

. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/qcow2_common.sh"
. "$(dirname "$0")/qcow2_write_common.sh"

_qcow2_init cmp dd

SEED=$(_wseed)
echo "# seed $SEED"
M=$((1 << 20))
IMG=$WORK/img.qcow2
REF=$WORK/ref.raw
DM=${QCOW2_DM_PREFIX}nospc

ktap_header
ktap_plan 11

# _dd_direct IN OFF_BYTES LEN_BYTES [DEV]   O_DIRECT 64 KiB writes of the
# first LEN bytes of IN at OFF; stderr in $WORK/dd.err; prints the number of
# bytes dd reports as copied
_dd_direct()
{
	local in=$1 off=$2 len=$3 dev=${4:-$MAP_DEV} rc
	dd if="$in" of="$dev" bs=64k iflag=count_bytes oflag=direct,seek_bytes \
		seek="$off" count="$len" 2>"$WORK/dd.err"
	rc=$?
	sed -n 's/^\([0-9]*\) bytes.*copied.*/\1/p' "$WORK/dd.err"
	return $rc
}

# --- 1: map on a 2 MiB device ------------------------------------------
rc=0
_mkimg "$IMG" $((64 * M)) cluster_size=64k || rc=1
truncate -s $((2 * M)) "$IMG"
truncate -s $((64 * M)) "$REF"
_diffwork fill "$WORK/data" $((16 * M)) --seed "$SEED" || rc=1
if [ $rc -eq 0 ] && _wmap "$DM" "$IMG"; then
	TABLE=$MAP_TABLE
	LOOP=$MAP_IMGDEV
	_check_wstatus "$DM" rw || rc=1
	EV0=$(_event_nr "$DM")
else
	rc=1
fi
_result "map a 64 MiB image on a 2 MiB image device read-write" $rc
[ $rc -eq 0 ] || { ktap_finish; }

# --- 2: 1 MiB fits ------------------------------------------------------
rc=0
n=$(_dd_direct "$WORK/data" 0 $M) || { _qdiag "dd: $(cat "$WORK/dd.err")"; rc=1; }
dd if="$WORK/data" of="$REF" bs=64k count=16 conv=notrunc status=none
[ "$n" = $M ] || { _qdiag "dd copied ${n:-?} bytes, expected $M"; rc=1; }
_check_wstatus "$DM" rw || rc=1
_result "the first 1 MiB is written" $rc

# --- 3: ENOSPC ------------------------------------------------------------
rc=0
_qmark
if n=$(_dd_direct "$WORK/data" $M $((8 * M))); then
	_qdiag "an 8 MiB write into a 2 MiB device succeeded"
	rc=1
fi
grep -q "No space left on device" "$WORK/dd.err" ||
	{ _qdiag "dd did not report ENOSPC:" "$(cat "$WORK/dd.err")"; rc=1; }
WRITTEN=${n:-0}
_qdiag "dd wrote $WRITTEN bytes before the error"
[ "$WRITTEN" -lt $((2 * M)) ] || { _qdiag "more was written than fits"; rc=1; }
dd if="$WORK/data" of="$REF" bs=64k iflag=count_bytes oflag=seek_bytes \
	seek=$M count="$WRITTEN" conv=notrunc status=none
_result "writing past the space fails with ENOSPC" $rc

# --- 4: status and event ------------------------------------------------
rc=0
if _wstatus "$DM"; then
	_qdiag "status: $WS_LINE"
	[ "$WS_MODE" = rw ] || { _qdiag "mode $WS_MODE, expected rw (no_space is not an error of the image)"; rc=1; }
	_wstatus_has "$DM" no_space || { _qdiag "status has no no_space"; rc=1; }
	_wstatus_has "$DM" corrupt && { _qdiag "status says corrupt"; rc=1; }
	[ "$WS_IOERR" = 0 ] || { _qdiag "io_errors $WS_IOERR"; rc=1; }
else
	rc=1
fi
EV1=$(_event_nr "$DM")
[ "${EV1:-0}" -gt "${EV0:-0}" ] || { _qdiag "no dm event (event_nr ${EV0:-?} -> ${EV1:-?})"; rc=1; }
_dmesg_expect -i 'qcow2: .*(full|no space)' || rc=1
_check_dmesg_clean || rc=1
_result "status shows no_space, dm event, kernel log" $rc

# --- 5: what was written is intact -----------------------------------------
rc=0
_drop_cache "$MAP_DEV"
_read_direct "$MAP_DEV" 0 $((M + WRITTEN)) "$REF" || rc=1
_result "data written before ENOSPC is intact" $rc

# --- 6: in-place rewrite while full ------------------------------------------
rc=0
dd if="$WORK/data" of="$MAP_DEV" bs=64k iflag=skip_bytes,count_bytes oflag=direct \
	skip=$((8 * M)) count=$((512 << 10)) seek=4 status=none 2>"$WORK/dd.err" ||
	{ _qdiag "rewrite of allocated clusters failed: $(cat "$WORK/dd.err")"; rc=1; }
dd if="$WORK/data" of="$REF" bs=64k iflag=skip_bytes,count_bytes skip=$((8 * M)) \
	count=$((512 << 10)) seek=4 conv=notrunc status=none
_read_direct "$MAP_DEV" 0 $((M + WRITTEN)) "$REF" || rc=1
_result "allocated clusters can be overwritten while full" $rc

# --- 7: flush, consistent on disk ----------------------------------------
rc=0
# fsync() on the device sends the flush (blockdev --flushbufs would not)
_wbg_wait 120 sync "$MAP_DEV" || { _qdiag "flush (sync $MAP_DEV) failed or hangs"; rc=1; }
_wcheck "$IMG" "0 3" || rc=1
_wconvert "$IMG" "$WORK/out.raw" && _wcompare "$WORK/out.raw" "$REF" ||
	{ _qdiag "QEMU's view after a flush differs from the reference"; rc=1; }
rm -f "$WORK/out.raw"
_result "after a flush the full image is consistent on disk" $rc

# --- 8: grow the device, reload ---------------------------------------------
rc=0
truncate -s $((128 * M)) "$IMG"
losetup -c "$LOOP" || { _qdiag "losetup -c failed"; rc=1; }
[ "$(blockdev --getsize64 "$LOOP")" = $((128 * M)) ] || { _qdiag "loop device did not grow"; rc=1; }
_wreload "$DM" "$TABLE" || rc=1
_check_wstatus "$DM" rw || rc=1
n=$(_dd_direct "$WORK/data" $M $((8 * M))) || { _qdiag "dd after growing: $(cat "$WORK/dd.err")"; rc=1; }
[ "$n" = $((8 * M)) ] || { _qdiag "dd copied ${n:-?} bytes after growing"; rc=1; }
dd if="$WORK/data" of="$REF" bs=64k iflag=count_bytes oflag=seek_bytes \
	seek=$M count=$((8 * M)) conv=notrunc status=none
# and a buffered write with fsync at the end of the disk
dd if="$WORK/data" of="$MAP_DEV" bs=4k count=64 seek=$((60 * M / 4096)) conv=fsync \
	status=none 2>"$WORK/dd.err" || { _qdiag "buffered write: $(cat "$WORK/dd.err")"; rc=1; }
dd if="$WORK/data" of="$REF" bs=4k count=64 seek=$((60 * M / 4096)) conv=notrunc status=none
_check_wstatus "$DM" rw || rc=1
_wcompare "$MAP_DEV" "$REF" || rc=1
_result "after growing the device and reloading, writes work again" $rc

# --- 9: removal, qemu-img check ----------------------------------------------
rc=0
_wunmap "$DM"
_wcheck "$IMG" || rc=1
_wconvert "$IMG" "$WORK/out.raw" && _wcompare "$WORK/out.raw" "$REF" || rc=1
rm -f "$WORK/out.raw" "$REF"
_result "qemu-img check exit 0 and QEMU's view equals the reference" $rc

# --- 10: no room for the first L2 table; removed while full -----------------
rc=0
IMG2=$WORK/tiny.qcow2
_mkimg "$IMG2" $((64 * M)) cluster_size=64k || rc=1
# header, L1, refcount table and block take 4 clusters: one more is free
truncate -s $((320 << 10)) "$IMG2"
_qmark
if [ $rc -eq 0 ] && _wmap "${DM}2" "$IMG2"; then
	if dd if="$WORK/data" of="$MAP_DEV" bs=64k count=4 oflag=direct seek=100 \
		status=none 2>"$WORK/dd.err"; then
		_qdiag "writing into a device without room succeeded"
		rc=1
	fi
	grep -q "No space left on device" "$WORK/dd.err" ||
		{ _qdiag "dd did not report ENOSPC: $(cat "$WORK/dd.err")"; rc=1; }
	_wstatus_has "${DM}2" no_space || { _qdiag "no no_space: $WS_LINE"; rc=1; }
	# reads still work (zeros)
	cmp -n $M "$MAP_DEV" /dev/zero >/dev/null 2>&1 || { _qdiag "reads of the full image fail"; rc=1; }
	_wunmap "${DM}2"
	_wcheck "$IMG2" || rc=1
	_check_dmesg_clean || rc=1
else
	rc=1
fi
_result "out of space for an L2 table, removed while full: qemu-img check 0" $rc

# --- 11: no room to grow the refcount table -----------------------------------
# 512-byte clusters with 64-bit refcounts: one refcount block covers 64
# clusters and the one-cluster refcount table 2 MiB of the device.  The
# device ends 1 KiB past that: the next allocation must grow the table, which
# needs at least three clusters there.  The write fails with ENOSPC and
# no_space, nothing written before is lost, and the image stays consistent.
rc=0
IMG3=$WORK/rtgrow.qcow2
_mkimg "$IMG3" $((8 * M)) cluster_size=512,refcount_bits=64 || rc=1
truncate -s $((2 * M + 1024)) "$IMG3"
_qmark
if [ $rc -eq 0 ] && _wmap "${DM}3" "$IMG3"; then
	n=$(_dd_direct "$WORK/data" 0 $((4 * M)))
	grep -q "No space left on device" "$WORK/dd.err" ||
		{ _qdiag "dd did not report ENOSPC: $(cat "$WORK/dd.err")"; rc=1; }
	if [ -z "$n" ] || [ "$n" -le 0 ] || [ "$n" -ge $((2 * M)) ]; then
		_qdiag "dd copied ${n:-?} bytes before ENOSPC (expected some, less than 2 MiB)"
		rc=1
	else
		cmp -n "$n" "$MAP_DEV" "$WORK/data" ||
			{ _qdiag "data written before ENOSPC differs"; rc=1; }
	fi
	_wstatus_has "${DM}3" no_space || { _qdiag "no no_space: $WS_LINE"; rc=1; }
	[ "$WS_MODE" = rw ] || { _qdiag "mode $WS_MODE, expected rw ($WS_LINE)"; rc=1; }
	_wbg_wait 120 sync "$MAP_DEV" || { _qdiag "flush failed or hangs"; rc=1; }
	_wunmap "${DM}3"
	_wcheck "$IMG3" || rc=1
	if [ $rc -eq 0 ] && [ -n "$n" ]; then
		_wconvert "$IMG3" "$WORK/out.raw" && cmp -n "$n" "$WORK/out.raw" "$WORK/data" ||
			{ _qdiag "QEMU does not read what was written before ENOSPC"; rc=1; }
		rm -f "$WORK/out.raw"
	fi
	_check_dmesg_clean || rc=1
else
	rc=1
fi
_result "out of space while growing the refcount table: ENOSPC, consistent" $rc

ktap_finish
