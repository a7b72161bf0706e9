#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_write_suspend.sh - suspend writes all metadata back; a flush makes
# the on-disk image consistent.
#
# A 32 MiB image (64 KiB clusters, some data written by QEMU) is mapped
# read-write and written without any flush: O_DIRECT writes that allocate,
# a discard that frees QEMU-written clusters, a partial write-zeroes.  Then:
#   - the status shows dirty metadata slices (otherwise there is nothing
#     for suspend to write back and the test proves nothing);
#   - `dmsetup suspend`: no dirty slices left; while suspended
#     `qemu-img check` exits 0 (no corruption, no leaks) and `qemu-img
#     convert` equals what was written;
#   - resume; the device still reads the same; a seeded workload
#     (qcow2_diffwork.py) writes more; the device equals the reference;
#   - flush smoke: more writes without flush, then fsync on the device
#     (`sync DEV`); with the image still mapped, `qemu-img check -U` must not
#     find corruption (exit 0 or 3) and QEMU must see every completed write;
#   - the image changed while suspended (`qemu-img snapshot -c`, which the
#     documentation allows): after resume, more writes and removal, `qemu-img
#     check` exits 0, the snapshot holds the data of the suspend time and the
#     active image the data written after it;
#   - removal: `qemu-img check` exits 0 and `qemu-img convert` equals the
#     reference.

. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/qcow2_common.sh"
. "$(dirname "$0")/qcow2_write_common.sh"

_qcow2_init cmp dd sync blkdiscard

SEED=$(_wseed)
echo "# seed $SEED (reproduce with QCOW2_SEED=$SEED)"
M=$((1 << 20))
K=1024
VS=$((32 * M))
IMG=$WORK/img.qcow2
REF=$WORK/ref.raw
DM=${QCOW2_DM_PREFIX}s

ktap_header
ktap_plan 8

_diffwork fill "$WORK/data" $((8 * M)) --seed "$SEED" || _fail "cannot make test data"

# _wr OFF LEN SRC_OFF   O_DIRECT write of data[SRC_OFF..] to the device and
# the reference, no flush
_wr()
{
	dd if="$WORK/data" of="$MAP_DEV" bs=4k iflag=skip_bytes,count_bytes \
		oflag=direct,seek_bytes skip="$3" seek="$1" count="$2" status=none ||
		{ _qdiag "write $1+$2 failed"; return 1; }
	dd if="$WORK/data" of="$REF" bs=4k iflag=skip_bytes,count_bytes \
		oflag=seek_bytes skip="$3" seek="$1" count="$2" conv=notrunc status=none
}

# _zr OFF LEN [-z]   discard (or write zeroes) on device and reference
_zr()
{
	blkdiscard ${3:-} -o "$1" -l "$2" "$MAP_DEV" ||
		{ _qdiag "blkdiscard ${3:-} $1+$2 failed"; return 1; }
	dd if=/dev/zero of="$REF" bs=512 oflag=seek_bytes seek="$1" \
		count=$(($2 / 512)) conv=notrunc status=none
}

# _fsync_dev   fsync() on the device: a flush
_fsync_dev()
{
	_wguard 120 "sync $MAP_DEV" sync "$MAP_DEV"
}

# _suspend   dmsetup suspend
_suspend()
{
	_wguard 120 "dmsetup suspend" dmsetup suspend "$DM"
}

# _work SEED OPS LOG   seeded workload, then the whole device compared
_work()
{
	_wguard 240 "the workload" _diffwork run --seed "$1" --dev "$MAP_DEV" --ref "$REF" \
		--ops "$2" --cluster 65536 --log "$3" --compare
}

# --- 1 ------------------------------------------------------------------
rc=0
_mkimg "$IMG" $VS cluster_size=64k || rc=1
_qio "$IMG" "write -P 0x11 0 $((2 * M))" "write -P 0x22 $((8 * M)) 640k" || rc=1
_wconvert "$IMG" "$REF" || rc=1
_wroom "$IMG" $VS || rc=1
if [ $rc -eq 0 ] && _wmap "$DM" "$IMG"; then
	_check_wstatus "$DM" rw || rc=1
	_wr $((4 * M)) $((256 * K)) 0 || rc=1             # new clusters
	_wr $((8 * M + 4 * K)) $((8 * K)) $M || rc=1      # in place (QEMU's)
	_wr $((12 * M - 12 * K)) $((100 * K)) $((2 * M)) || rc=1  # straddling
	_zr $((512 * K)) $M || rc=1                        # frees QEMU's clusters
	_zr $((8 * M + 64 * K)) $((16 * K)) -z || rc=1     # partial
	_zr $((8 * M + 128 * K)) $((128 * K)) -z || rc=1   # whole clusters
	_wr $((20 * M)) $((1 * M)) $((3 * M)) || rc=1
	if _wstatus "$DM"; then
		_qdiag "status: $WS_LINE"
		[ "$WS_DIRTY" -gt 0 ] ||
			{ _qdiag "no dirty metadata slices before suspend (nothing to write back?)"; rc=1; }
	else
		rc=1
	fi
else
	rc=1
fi
_result "writes without flush leave dirty metadata" $rc
[ $rc -eq 0 ] || ktap_finish

# --- 2 ------------------------------------------------------------------
rc=0
_qmark
_suspend || rc=1
if _wstatus "$DM"; then
	_qdiag "status while suspended: $WS_LINE"
	[ "$WS_DIRTY" -eq 0 ] || { _qdiag "$WS_DIRTY dirty slices left after suspend"; rc=1; }
	[ "$WS_MODE" = rw ] || { _qdiag "mode $WS_MODE"; rc=1; }
else
	rc=1
fi
_wcheck "$IMG" || rc=1
_result "suspended: no dirty metadata, qemu-img check exit 0" $rc

rc=0
_wconvert "$IMG" "$WORK/out.raw" && _wcompare "$WORK/out.raw" "$REF" || rc=1
rm -f "$WORK/out.raw"
_wheader_clean "$IMG" || rc=1
_result "suspended: qemu-img convert equals what was written" $rc

# --- 3 ------------------------------------------------------------------
rc=0
dmsetup resume "$DM" || { _qdiag "resume failed"; rc=1; }
_wsync_udev
_check_wstatus "$DM" rw || rc=1
_wcompare "$MAP_DEV" "$REF" || rc=1
_work "$SEED" 150 "$WORK/ops.log" || rc=1
_check_wstatus "$DM" rw || rc=1
_check_dmesg_clean || rc=1
_result "resumed: reads, then a seeded workload, match the reference" $rc

# --- 4: flush smoke -------------------------------------------------------
rc=0
_wr $((28 * M)) $((320 * K)) $((5 * M)) || rc=1
_wr $((2 * M - 4 * K)) $((72 * K)) $((6 * M)) || rc=1
_zr $((4 * M)) $((128 * K)) || rc=1
_zr $((21 * M)) $((64 * K)) -z || rc=1
_fsync_dev || rc=1
_wcheck "$IMG" "0 3" || rc=1
_wconvert "$IMG" "$WORK/out.raw" && _wcompare "$WORK/out.raw" "$REF" ||
	{ _qdiag "after a flush QEMU does not see every completed write"; rc=1; }
rm -f "$WORK/out.raw"
_result "after a flush (fsync) the mapped image is consistent on disk" $rc

# --- 5: image changed while suspended -------------------------------------
rc=0
_wr $((6 * M)) $((192 * K)) $((7 * M)) || rc=1
_zr $((20 * M)) $((256 * K)) || rc=1          # frees clusters written by us
_suspend || rc=1
cp "$REF" "$WORK/snap.raw"
out=$(qemu-img snapshot -c s1 "$IMG" 2>&1) || { _qdiag "qemu-img snapshot -c while suspended: $out"; rc=1; }
_wcheck "$IMG" || rc=1
dmsetup resume "$DM" || { _qdiag "resume failed"; rc=1; }
_wsync_udev
# overwrite clusters now shared with s1 (copy on write), discard some
_wr $((2 * M)) $((64 * K)) $((4 * M)) || rc=1
_wr $((4 * M + 60 * K)) $((8 * K)) $((4 * M)) || rc=1
_zr $((20 * M + 256 * K)) $((512 * K)) || rc=1
_work $((SEED + 1)) 60 "$WORK/ops2.log" || rc=1
_result "image changed while suspended (snapshot -c): writes after resume" $rc

# --- 6: removal ------------------------------------------------------------
rc=0
_wunmap "$DM"
_wcheck "$IMG" || rc=1
_wconvert "$IMG" "$WORK/out.raw" && _wcompare "$WORK/out.raw" "$REF" || rc=1
_wconvert "$IMG" "$WORK/s1.raw" -l snapshot.name=s1 && _wcompare "$WORK/s1.raw" "$WORK/snap.raw" ||
	{ _qdiag "snapshot s1 does not hold the data of the suspend"; rc=1; }
_result "removed: qemu-img check exit 0, active image and snapshot intact" $rc

# --- 7 ---------------------------------------------------------------------
rc=0
_check_dmesg_clean || rc=1
_result "no kernel warnings" $rc

ktap_finish
