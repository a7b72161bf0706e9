#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_write_commit.sh - allocating writes while commits write metadata.
#
# A commit stops metadata updates only while it copies the dirty metadata
# slices; it writes the copies while allocating writes go on (see "Writing"
# in qcow2.rst).  A slice changed while its copy is written must stay dirty,
# or the change never reaches the disk when no later change of the slice
# makes it dirty again: the device reads right until it is removed, and the
# image QEMU sees lacks the mapping.  The image (256 MiB, 64 KiB clusters:
# an L2 slice maps 32 MiB) is a file in $WORK on a loop device under
# dm-delay, which delays writes and flushes by 100 ms, so that each commit
# lasts a few hundred milliseconds:
#   a) a fio job writes 256 4 KiB blocks in random order, at iodepth 8, into
#      the first 32 MiB (most blocks in a new cluster; fio verifies them),
#      while the device is flushed every 0.2 s: commits must have written
#      copies (commit_copies);
#   b) in a 32 MiB region of its own, write a block into a new cluster,
#      start a flush, and 0.15 s later (while the commit writes its copies)
#      write a block into another new cluster of the same L2 slice, which is
#      not written again afterwards.  This counts when that changed a slice
#      whose copy was being written (commit_redirtied); else it is tried in
#      the next region, up to 6 times, waiting 0.3, 0.05, 0.5, 0.1 and 0.2 s
#      instead (a slow host may start the commit late, or write faster),
#      and if it never counts the test fails: it would have proved nothing;
#   c) the device is read, removed (the last commit writes what is still
#      dirty), `qemu-img check` must exit 0 and QEMU must read the image as
#      the device did: the second block of b) too.

. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/qcow2_common.sh"
. "$(dirname "$0")/qcow2_write_common.sh"

_qcow2_init fio cmp python3
_gen_only && _skip "GEN_ONLY: this test has no image-only part"
_have_dm_target delay || _skip "no dm-delay target in this kernel"
M=$((1 << 20))
VS=$((256 * M))
DM=${QCOW2_DM_PREFIX}commit
DELAY=${QCOW2_DM_PREFIX}commitdelay
IMG=$WORK/commit.qcow2
DEV=/dev/mapper/$DM
SEED=$(_wseed)
echo "# fio seed $SEED (reproduce with QCOW2_SEED=$SEED; round n uses seed $SEED+n)"

ktap_header
ktap_plan 4

_fsync()
{
	python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd); os.close(fd)' "$1"
}

# _window OFF SECS   b) in the 32 MiB region at OFF: a block at OFF + 64 KiB,
# a flush, SECS later a block at OFF + 448 KiB (both 4 KiB of 0x5c)
_window()
{
	python3 - "$DEV" "$1" "$2" <<'PYEOF'
import mmap, os, sys, threading, time
dev, off, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
buf = mmap.mmap(-1, 4096)
buf.write(b"\x5c" * 4096)
fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
assert os.pwrite(fd, buf, off + (64 << 10)) == 4096
flush = threading.Thread(target=os.fsync, args=(fd,))
flush.start()
time.sleep(secs)
assert os.pwrite(fd, buf, off + (448 << 10)) == 4096
flush.join()
os.close(fd)
PYEOF
}

# --- map ----------------------------------------------------------------------
rc=0
qemu-img create -q -f qcow2 -o cluster_size=64k "$IMG" "$VS" && _wroom "$IMG" "$VS" ||
	{ _qdiag "cannot create $IMG"; rc=1; }
if [ $rc -eq 0 ]; then
	loop=$(_wimg_attach "$IMG") &&
		_dm_create "$DELAY" "0 $(blockdev --getsz "$loop") delay $loop 0 0 $loop 0 100" &&
		_dm_create "$DM" "$(_qcow2_table "/dev/mapper/$DELAY" $((VS / 512)))" ||
		{ _qdiag "cannot map $IMG over dm-delay"; rc=1; }
fi
[ $rc -eq 0 ] && { _check_wstatus "$DM" rw || rc=1; }
_result "image in a file, under dm-delay (writes and flushes 100 ms), mapped" $rc
[ $rc -eq 0 ] || ktap_finish

# --- a) ----------------------------------------------------------------------
rc=0
c0=$(_wstat "$DM" commit_copies)
fio --name=a --filename="$DEV" --ioengine=libaio --iodepth=8 --direct=1 --rw=randwrite \
	--bs=4k --size=$((32 * M)) --number_ios=256 --randseed="$SEED" --verify=crc32c \
	--verify_fatal=1 --verify_state_save=0 --output="$WORK/fio.out" >/dev/null 2>&1 &
fio_pid=$!
while kill -0 "$fio_pid" 2>/dev/null; do
	sleep 0.2
	_fsync "$DEV" || { _qdiag "a) fsync failed"; rc=1; break; }
done
wait "$fio_pid" || rc=1
if [ $rc -ne 0 ] || grep -Eq 'verify: bad|err= *[1-9]' "$WORK/fio.out"; then
	_qdiag "a) fio failed: $(grep -Ei 'error|verify|err=' "$WORK/fio.out" | head -5)"
	rc=1
fi
copies=$(($(_wstat "$DM" commit_copies) - c0))
_qdiag "a) stats: $(dmsetup message "$DM" 0 stats | grep -E '^(commit|flushes|map_allocs|worker_allocs)' | tr '\n' ' ')"
[ "$copies" -gt 0 ] || { _qdiag "a) no commit wrote copies"; rc=1; }
_check_wstatus "$DM" rw || rc=1
_result "a) allocating 4k writes, flushes every 0.2 s: commits wrote copies, fio verifies" $rc

# --- b) ----------------------------------------------------------------------
rc=0
counted=0
n=0
for secs in 0.15 0.3 0.05 0.5 0.1 0.2; do
	n=$((n + 1))
	r0=$(_wstat "$DM" commit_redirtied)
	_window $((n * 32 * M)) "$secs" || { _qdiag "b) writes or flush failed"; rc=1; break; }
	redirtied=$(($(_wstat "$DM" commit_redirtied) - r0))
	_qdiag "b) region $n, second write after $secs s: commit_redirtied +$redirtied"
	[ "$redirtied" -gt 0 ] && { counted=1; break; }
done
[ $rc -ne 0 ] || [ $counted -eq 1 ] ||
	{ _qdiag "b) no write changed a slice while its copy was written: nothing tested"; rc=1; }
_check_wstatus "$DM" rw || rc=1
_result "b) a write into a slice while its copy is written" $rc

# --- c) ----------------------------------------------------------------------
rc=0
dd if="$DEV" of="$WORK/dm.raw" bs=1M iflag=direct status=none || rc=1
_dm_remove "$DM" >/dev/null || rc=1
_dm_remove "$DELAY" >/dev/null || rc=1
_wcheck "$IMG" || rc=1
_wconvert "$IMG" "$WORK/qemu.raw" || rc=1
if [ $rc -eq 0 ] && ! cmp -s "$WORK/dm.raw" "$WORK/qemu.raw"; then
	_qdiag "QEMU reads the image differently: $(cmp "$WORK/dm.raw" "$WORK/qemu.raw" | head -1)"
	rc=1
fi
rm -f "$WORK/dm.raw" "$WORK/qemu.raw"
_check_dmesg_clean || rc=1
_result "c) removed: qemu-img check exit 0, QEMU reads what the device read" $rc
ktap_finish
