#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_write_corrupt.sh - dirty and corrupt images, and corruption found
# while writing.
#
# Refused read-write, mapped read-only:
#   - an image with the dirty bit (lazy refcounts, qemu-io killed with
#     abort after a write: refcounts missing on disk);
#   - an image with the corrupt bit (set with qcow2_poke.py).
#   Loading the table read-write must fail, with a kernel log line pointing
#   to `qemu-img check -r all`; a read-only table for the same image works
#   and reads what QEMU reads; the image is left untouched.
#
# Runtime corruption: an image whose L2 entry for one cluster points beyond
# the image device is mapped read-write, and a QEMU-written cluster is
# discarded (its refcount decrement waits for the next commit).  Writing
# into the bad cluster fails with EIO; the mode switches to "ro", the status
# shows "corrupt", a dm event fired, the header has the corrupt bit
# (qemu-img info: corrupt: true), writes, write-zeroes and discards anywhere
# else fail, reads of intact clusters still work (the bad one fails), a
# flush completes (with or without an error: it must not hang), and nothing
# oopses.  Afterwards a read-write table is refused.

. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/qcow2_common.sh"
. "$(dirname "$0")/qcow2_write_common.sh"

_qcow2_init cmp dd

M=$((1 << 20))
K=1024
DM=${QCOW2_DM_PREFIX}c

ktap_header
ktap_plan 10

# _refused_rw NAME IMG   a read-write table for IMG fails, the kernel log
# says how to repair it; the image file is unchanged
_refused_rw()
{
	local name=$1 img=$2 rc=0 sum0 sum1
	sum0=$(sha256sum <"$img")
	_qmark
	if _wmap "$name" "$img" 2>/dev/null; then
		_qdiag "read-write table accepted for $(basename "$img")"
		rc=1
	fi
	_wunmap "$name"
	_dmesg_expect 'qcow2: .*qemu-img check -r all' || rc=1
	_check_dmesg_clean || rc=1
	sum1=$(sha256sum <"$img")
	[ "$sum0" = "$sum1" ] || { _qdiag "the refused image was modified"; rc=1; }
	return $rc
}

# _ro_ok NAME IMG   a read-only table works and reads what QEMU reads
_ro_ok()
{
	local name=$1 img=$2 rc=0
	_wconvert "$img" "$WORK/ref.raw" || return 1
	if _wmap "$name" "$img" ro; then
		_check_wstatus "$name" ro || rc=1
		_wcompare "$MAP_DEV" "$WORK/ref.raw" || rc=1
		# and it does not take writes
		if dd if=/dev/zero of="$MAP_DEV" bs=4k count=1 oflag=direct status=none 2>/dev/null; then
			_qdiag "a read-only mapping took a write"
			rc=1
		fi
	else
		rc=1
	fi
	_wunmap "$name"
	rm -f "$WORK/ref.raw"
	return $rc
}

# --- dirty bit ------------------------------------------------------------
DIRTY=$WORK/dirty.qcow2
rc=0
_mkimg "$DIRTY" $((16 * M)) lazy_refcounts=on,cluster_size=64k || rc=1
qemu-io -c 'write -P 0x5a 0 128k' -c abort "$DIRTY" >/dev/null 2>&1
[ "$(_img_info "$DIRTY" dirty-flag)" = true ] ||
	{ _qdiag "could not make a dirty image"; rc=1; }
[ $rc -eq 0 ] && { _refused_rw "$DM" "$DIRTY" || rc=1; }
_result "dirty image: read-write table refused, log names qemu-img check -r all" $rc

rc=0
_ro_ok "$DM" "$DIRTY" || rc=1
_result "dirty image: read-only table works" $rc

# --- corrupt bit ------------------------------------------------------------
CORR=$WORK/corrupt.qcow2
rc=0
_mkimg "$CORR" $((16 * M)) cluster_size=64k || rc=1
_qio "$CORR" "write -P 0x66 0 192k" "write -P 0x77 1M 64k" || rc=1
_poke set-feature "$CORR" incompat 1 || rc=1
[ "$(_img_info "$CORR" format-specific.data.corrupt)" = true ] ||
	{ _qdiag "could not set the corrupt bit"; rc=1; }
[ $rc -eq 0 ] && { _refused_rw "$DM" "$CORR" || rc=1; }
_result "corrupt image: read-write table refused, log names qemu-img check -r all" $rc

rc=0
_ro_ok "$DM" "$CORR" || rc=1
_result "corrupt image: read-only table works" $rc

# --- runtime corruption -------------------------------------------------------
# The bad cluster is at 6 MiB, away from where udev's blkid probes for
# signatures (a read of it would already find the corruption).
BAD=$WORK/bad.qcow2
BADOFF=$((6 * M))
rc=0
_mkimg "$BAD" $((16 * M)) cluster_size=64k || rc=1
_qio "$BAD" "write -P 0x11 0 256k" "write -P 0x33 4M 64k" "write -P 0x22 $BADOFF 64k" || rc=1
_wroom "$BAD" $((16 * M)) || rc=1
DEVSIZE=$(stat -c %s "$BAD")
# the cluster at 6 MiB -> a host cluster 1 GiB past the end of the device
BEYOND=$(((DEVSIZE + (1 << 30)) & ~(64 * K - 1)))
_poke l2-set "$BAD" $BADOFF $(((1 << 63) | BEYOND)) || rc=1
# what intact clusters hold (4 MiB is discarded below)
dd if=/dev/zero of="$WORK/good.raw" bs=1M count=16 status=none
head -c $((256 * K)) /dev/zero | tr '\0' '\021' |
	dd of="$WORK/good.raw" bs=64k iflag=fullblock conv=notrunc status=none
if [ $rc -eq 0 ] && _wmap "$DM" "$BAD"; then
	_check_wstatus "$DM" rw || rc=1
	EV0=$(_event_nr "$DM")
	_read_direct "$MAP_DEV" 0 $((256 * K)) "$WORK/good.raw" || rc=1
	# a cluster freed before the corruption (its refcount decrement waits
	# for the next commit)
	blkdiscard -o $((4 * M)) -l $((64 * K)) "$MAP_DEV" || { _qdiag "discard failed"; rc=1; }
	_read_direct "$MAP_DEV" $((4 * M)) $((64 * K)) "$WORK/good.raw" || rc=1
else
	rc=1
fi
_result "image with an L2 entry beyond the device maps read-write" $rc
[ $rc -eq 0 ] || ktap_finish

rc=0
_qmark
if dd if=/dev/urandom of="$MAP_DEV" bs=4k count=1 seek=$((BADOFF / 4096 + 3)) oflag=direct \
	status=none 2>"$WORK/dd.err"; then
	_qdiag "write into the bad cluster succeeded"
	rc=1
fi
grep -q "Input/output error" "$WORK/dd.err" ||
	{ _qdiag "expected EIO, dd said: $(cat "$WORK/dd.err")"; rc=1; }
if _wstatus "$DM"; then
	_qdiag "status: $WS_LINE"
	[ "$WS_MODE" = ro ] || { _qdiag "mode $WS_MODE, expected ro"; rc=1; }
	_wstatus_has "$DM" corrupt || { _qdiag "status does not show corrupt"; rc=1; }
else
	rc=1
fi
EV1=$(_event_nr "$DM")
[ "${EV1:-0}" -gt "${EV0:-0}" ] || { _qdiag "no dm event (event_nr ${EV0:-?} -> ${EV1:-?})"; rc=1; }
_dmesg_expect -i 'qcow2: .*corrupt' || rc=1
_result "write into the bad cluster: EIO, mode ro, status corrupt, dm event" $rc

rc=0
[ "$(_img_info "$BAD" format-specific.data.corrupt)" = true ] ||
	{ _qdiag "the header has no corrupt bit"; rc=1; }
_result "the corrupt bit is set in the header" $rc

rc=0
# writes elsewhere: in place into an allocated cluster, into an unallocated
# one, write-zeroes, discard
for seek in 0 $((8 * M / 4096)); do
	if dd if=/dev/urandom of="$MAP_DEV" bs=4k count=1 seek=$seek oflag=direct \
		status=none 2>"$WORK/dd.err"; then
		_qdiag "write at block $seek succeeded after the corruption"
		rc=1
	fi
done
blkdiscard -z -o $((9 * M)) -l $((64 * K)) "$MAP_DEV" 2>/dev/null &&
	{ _qdiag "write-zeroes succeeded after the corruption"; rc=1; }
blkdiscard -o $((10 * M)) -l $((64 * K)) "$MAP_DEV" 2>/dev/null &&
	{ _qdiag "discard succeeded after the corruption"; rc=1; }
# intact clusters still read; the bad one fails (EIO), not zeros
_drop_cache "$MAP_DEV"
_read_direct "$MAP_DEV" 0 $((256 * K)) "$WORK/good.raw" || rc=1
_read_direct "$MAP_DEV" $((4 * M)) $((64 * K)) "$WORK/good.raw" || rc=1
_read_direct "$MAP_DEV" $((12 * M)) $((64 * K)) "$WORK/good.raw" || rc=1
if dd if="$MAP_DEV" of=/dev/null bs=4k count=1 skip=$((BADOFF / 4096)) iflag=direct \
	status=none 2>/dev/null; then
	_qdiag "reading the bad cluster succeeded"
	rc=1
fi
_wstatus "$DM" && [ "$WS_MODE" = ro ] || { _qdiag "mode ${WS_MODE:-?}, expected ro"; rc=1; }
_check_dmesg_clean || rc=1
_result "after the corruption: writes fail, intact clusters read, no oops" $rc

# A flush must complete (with or without an error), also with a free pending
# from before the corruption and writes refused since.
rc=0
_wbg_wait 60 dd if=/dev/urandom of="$MAP_DEV" bs=4k count=1 seek=$((8 * M / 4096)) \
	conv=fsync status=none
case $? in
0) _qdiag "a buffered write + fsync succeeded after the corruption"; rc=1 ;;
124) _qdiag "fsync after the corruption hangs"; rc=1 ;;
esac
if [ $rc -eq 0 ]; then
	_wbg_wait 60 sync "$MAP_DEV"
	[ $? -ne 124 ] || { _qdiag "sync (flush) after the corruption hangs"; rc=1; }
fi
_result "a flush after the corruption completes" $rc

rc=0
_wunmap "$DM"
[ "$(_img_info "$BAD" format-specific.data.corrupt)" = true ] ||
	{ _qdiag "corrupt bit lost after removal"; rc=1; }
_refused_rw "$DM" "$BAD" || rc=1
_check_dmesg_clean || rc=1
_result "after removal the image is refused read-write" $rc

ktap_finish
