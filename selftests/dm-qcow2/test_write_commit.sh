#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_write_commit.sh - allocating writes while commits write metadata.
#
# A commit stops metadata updates only while it copies the dirty metadata
# slices and L1 table sectors; it writes the copies while allocating writes
# go on (see "Writing" in qcow2.rst).  A slice or sector changed while its
# copy is written must stay dirty, or the change never reaches the disk when
# no later change makes it dirty again: the device reads right until it is
# removed, and the image QEMU sees lacks the mapping.  Two images, each a
# file in $WORK on a loop device under dm-delay, which delays writes and
# flushes by 100 ms, so that each commit lasts a few hundred milliseconds:
# A (256 MiB, 64 KiB clusters: an L2 slice maps 32 MiB, one L2 table all of
# it), B (64 MiB, 4 KiB clusters: an L2 table maps 2 MiB, one L1 sector
# all of it) and C (for f) only).
#   a) a fio job writes 256 4 KiB blocks in random order, at iodepth 8, into
#      the first 32 MiB of A (most blocks in a new cluster; fio verifies
#      them), while the device is flushed every 0.2 s: commits must have
#      written copies (commit_copies);
#   b) in a 32 MiB region of A of its own, write a block into a new cluster,
#      start a flush, and 0.15 s later (while the commit writes its copies)
#      write a block into another new cluster of the same L2 slice, which is
#      not written again afterwards.  This counts when that changed a slice
#      whose copy was being written (commit_redirtied); else it is tried in
#      the next region, up to 6 times, waiting 0.3, 0.05, 0.5, 0.1 and 0.2 s
#      instead (a slow host may start the commit late, or write faster),
#      and if it never counts the test fails: it would have proved nothing;
#   c) the same on B with blocks 2 MiB apart, so that each needs a new L2
#      table: the second changes the L1 sector whose copy is being written
#      (commit_redirtied counts it; an L2 slice of a new table is never in
#      a copy), and no commit may have kept updates out until it was
#      durable (commit_locked: new L2 tables do not stop updates);
#   d) a commit while an allocating write is in flight: in an L2 table of B
#      of its own, write a block (and flush), then, from a thread, a block
#      into another cluster of that table (allocated in map(): the L2 entry
#      is stored when the 100 ms data write completes) and a flush while it
#      is in flight.  The commit copies the slice without the entry and must
#      leave it dirty (commit_redirtied); tried in the next table, waiting
#      0.03, 0.01, 0.06, 0, 0.02 and 0.045 s before the flush, until it
#      counts, else the test fails;
#   e) the same with a worker's write: after a block in one table of B and
#      a flush, a block from a thread into a table of B that does not exist
#      yet (a worker allocates the table, then the cluster, and writes the
#      data, 100 ms each) and a flush while it is in flight.  The worker's
#      update ends before its data write, so the commit copies the new
#      table's slice before the entry is in it and must leave it dirty
#      (commit_redirtied; a commit that waited for the whole update would
#      copy the slice with the entry); tried in the next pair of tables,
#      waiting 0.05, 0.15, 0.02, 0.25 and 0.1 s, until it counts;
#   f) a commit that writes L1 sectors in runs: on C (64 MiB, 512-byte
#      clusters: an L1 sector of 64 entries maps 2 MiB), a block in each
#      2 MiB region of L1 sectors 0, 1, 2, 5, 6, 7 and 20 (each a new L2
#      table), then one flush: the commit writes the runs [0, 3), [5, 8) and
#      [20] of the L1 table as one request each, from one buffer; each must
#      land where it belongs (checked in h));
#   g) new refcount blocks and a bigger refcount table while commits write
#      copies: a fio job writes 9 MiB in 64 KiB blocks in random order into
#      the last 16 MiB of C (a refcount block of 512 bytes covers 128 KiB of
#      the image, its first refcount table 8 MiB; fio verifies them), while
#      the device is flushed every 0.2 s.  The table must have moved (its
#      cluster count in the header grew), and no commit may have kept
#      updates out until it was durable (commit_locked): commits copy the
#      refcount table sectors of new blocks too;
#   h) the three devices are read, removed (the last commit writes what is
#      still dirty), `qemu-img check` must exit 0 and QEMU must read each
#      image as the device did: the second blocks of b) to e) too.  On a
#      kernel with lockdep, it must know the classes of the cluster locks
#      and of l2_busy (workers took both above), so that it checks them.

. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/qcow2_common.sh"
. "$(dirname "$0")/qcow2_write_common.sh"

_qcow2_init fio cmp python3
_gen_only && _skip "GEN_ONLY: this test has no image-only part"
_have_dm_target delay || _skip "no dm-delay target in this kernel"
M=$((1 << 20))
P=${QCOW2_DM_PREFIX}commit
IMG_A=$WORK/a.qcow2
IMG_B=$WORK/b.qcow2
IMG_C=$WORK/c.qcow2
DEV_A=/dev/mapper/${P}a
DEV_B=/dev/mapper/${P}b
DEV_C=/dev/mapper/${P}c
SEED=$(_wseed)
echo "# fio seed $SEED (reproduce with QCOW2_SEED=$SEED; round n uses seed $SEED+n)"

ktap_header
ktap_plan 9

# _race MODE DEV OFF1 OFF2 SECS   4 KiB blocks at OFF1 and OFF2 around a flush:
#   window: the block at OFF1, a flush from a thread, SECS later the block
#           at OFF2 (while the flush's commit writes its copies);
#   inflight: the block at OFF1 and a flush, then the block at OFF2 from a
#           thread and, SECS later, a flush while that write is in flight.
_race()
{
	python3 - "$@" <<'PYEOF'
import mmap, os, sys, threading, time
mode, dev, off1, off2 = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
secs = float(sys.argv[5])
buf = mmap.mmap(-1, 4096)
buf.write((b"\x5c" if mode == "window" else b"\x3a") * 4096)
fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
assert os.pwrite(fd, buf, off1) == 4096
if mode == "inflight":
    os.fsync(fd)
    first, second = (os.pwrite, (fd, buf, off2)), (os.fsync, (fd,))
else:
    first, second = (os.fsync, (fd,)), (os.pwrite, (fd, buf, off2))
t = threading.Thread(target=first[0], args=first[1])
t.start()
time.sleep(secs)
second[0](*second[1])
t.join()
os.close(fd)
PYEOF
}

# _windows DEV STRIDE FIRST SECOND WHAT   b) and c): in region n (at n * STRIDE)
# a block at FIRST and one at SECOND, for the six waits in turn, until
# commit_redirtied rises
_windows()
{
	local dev=$1 stride=$2 first=$3 second=$4 what=$5
	local secs n=0 r0 redirtied

	for secs in 0.15 0.3 0.05 0.5 0.1 0.2; do
		n=$((n + 1))
		r0=$(_wstat "${dev#/dev/mapper/}" commit_redirtied)
		_race window "$dev" $((n * stride + first)) $((n * stride + second)) "$secs" ||
			{ _qdiag "$what) writes or flush failed"; return 1; }
		redirtied=$(($(_wstat "${dev#/dev/mapper/}" commit_redirtied) - r0))
		_qdiag "$what) region $n, second write after $secs s: commit_redirtied +$redirtied"
		[ "$redirtied" -gt 0 ] && return 0
	done
	_qdiag "$what) no write changed metadata while its copy was written: nothing tested"
	return 1
}

# _inflights WHAT N STEP OFF2 STAT MIN SECS...   d) and e): _race inflight on B
# with blocks at the start of table N and OFF2 after it, for each wait SECS
# in turn (the next try STEP tables further), until commit_redirtied rises;
# counter STAT (reported) must rise by MIN or more in each try
_inflights()
{
	local what=$1 n=$2 step=$3 off2=$4 stat=$5 min=$6 secs r0 s0 redirtied got
	shift 6

	for secs in "$@"; do
		r0=$(_wstat "${P}b" commit_redirtied)
		s0=$(_wstat "${P}b" "$stat")
		_race inflight "$DEV_B" $((n * 2 * M)) $((n * 2 * M + off2)) "$secs" ||
			{ _qdiag "$what) writes or flushes failed"; return 1; }
		redirtied=$(($(_wstat "${P}b" commit_redirtied) - r0))
		got=$(($(_wstat "${P}b" "$stat") - s0))
		_qdiag "$what) table $n, flush after $secs s: commit_redirtied +$redirtied, $stat +$got"
		[ "$got" -ge "$min" ] || { _qdiag "$what) $stat +$got, not $min"; return 1; }
		[ "$redirtied" -gt 0 ] && return 0
		n=$((n + step))
	done
	_qdiag "$what) no commit copied a slice while an entry was to come: nothing tested"
	return 1
}

# _fio_flushed WHAT DEV FIO-ARGS...   a verified fio random write job on DEV,
# flushed every 0.2 s while it runs
_fio_flushed()
{
	local what=$1 dev=$2 fio_pid
	shift 2

	fio --name="$what" --filename="$dev" --ioengine=libaio --direct=1 --rw=randwrite \
		--randseed="$SEED" --verify=crc32c --verify_fatal=1 --verify_state_save=0 \
		--output="$WORK/fio.out" "$@" >/dev/null 2>&1 &
	fio_pid=$!
	while kill -0 "$fio_pid" 2>/dev/null; do
		sleep 0.2
		_fsync "$dev" || { _qdiag "$what) fsync failed"; kill "$fio_pid"; wait "$fio_pid"; return 1; }
	done
	wait "$fio_pid" && ! grep -Eq 'verify: bad|err= *[1-9]' "$WORK/fio.out" && return 0
	_qdiag "$what) fio failed: $(grep -Ei 'error|verify|err=' "$WORK/fio.out" | head -5)"
	return 1
}

# _delay_map NAME IMG   IMG on a loop device under dm-delay (NAMEdelay), mapped
# as NAME
_delay_map()
{
	local loop vs

	vs=$(_vsize "$2") && [ -n "$vs" ] &&
		loop=$(_wimg_attach "$2") &&
		_dm_create "$1delay" "0 $(blockdev --getsz "$loop") delay $loop 0 0 $loop 0 100" &&
		_dm_create "$1" "$(_qcow2_table "/dev/mapper/$1delay" $((vs / 512)))"
}

# --- map ----------------------------------------------------------------------
rc=0
qemu-img create -q -f qcow2 -o cluster_size=64k "$IMG_A" $((256 * M)) &&
	_wroom "$IMG_A" $((256 * M)) &&
	qemu-img create -q -f qcow2 -o cluster_size=4k "$IMG_B" $((64 * M)) &&
	_wroom "$IMG_B" $((64 * M)) &&
	qemu-img create -q -f qcow2 -o cluster_size=512 "$IMG_C" $((64 * M)) &&
	_wroom "$IMG_C" $((64 * M)) || { _qdiag "cannot create the images"; rc=1; }
if [ $rc -eq 0 ]; then
	_delay_map "${P}a" "$IMG_A" && _delay_map "${P}b" "$IMG_B" &&
		_delay_map "${P}c" "$IMG_C" ||
		{ _qdiag "cannot map the images over dm-delay"; rc=1; }
fi
for x in a b c; do
	[ $rc -eq 0 ] && { _check_wstatus "$P$x" rw || rc=1; }
done
_result "three images in files, under dm-delay (writes and flushes 100 ms), mapped" $rc
[ $rc -eq 0 ] || ktap_finish

# --- a) ----------------------------------------------------------------------
rc=0
c0=$(_wstat "${P}a" commit_copies)
_fio_flushed a "$DEV_A" --iodepth=8 --bs=4k --size=$((32 * M)) --number_ios=256 || rc=1
copies=$(($(_wstat "${P}a" commit_copies) - c0))
_qdiag "a) stats: $(dmsetup message "${P}a" 0 stats | grep -E '^(commit|flushes|map_allocs|worker_allocs)' | tr '\n' ' ')"
[ "$copies" -gt 0 ] || { _qdiag "a) no commit wrote copies"; rc=1; }
_check_wstatus "${P}a" rw || rc=1
_result "a) allocating 4k writes, flushes every 0.2 s: commits wrote copies, fio verifies" $rc

# --- b) ----------------------------------------------------------------------
rc=0
_windows "$DEV_A" $((32 * M)) $((64 << 10)) $((448 << 10)) b || rc=1
_check_wstatus "${P}a" rw || rc=1
_result "b) a write into a slice while its copy is written" $rc

# --- c) ----------------------------------------------------------------------
rc=0
l0=$(_wstat "${P}b" commit_locked)
n0=$(_wstat "${P}b" commits)
_windows "$DEV_B" $((4 * M)) $((8 << 10)) $((2 * M + (8 << 10))) c || rc=1
_qdiag "c) stats: $(dmsetup message "${P}b" 0 stats | grep -E '^(commit|flushes|zeroed_tables)' | tr '\n' ' ')"
locked=$(($(_wstat "${P}b" commit_locked) - l0))
commits=$(($(_wstat "${P}b" commits) - n0))
[ "$commits" -gt 0 ] || { _qdiag "c) no commit"; rc=1; }
[ "$locked" -eq 0 ] || { _qdiag "c) $locked of $commits commits kept updates out"; rc=1; }
_check_wstatus "${P}b" rw || rc=1
_result "c) a new L2 table while the L1 sector's copy is written; no commit locked" $rc

# --- d) ----------------------------------------------------------------------
rc=0
_inflights d 16 1 $((64 << 10)) map_allocs 0 0.03 0.01 0.06 0 0.02 0.045 || rc=1
_check_wstatus "${P}b" rw || rc=1
_result "d) a commit while an allocation made in map() is in flight" $rc

# --- e) ----------------------------------------------------------------------
rc=0
_inflights e 22 2 $((2 * M)) worker_allocs 2 0.05 0.15 0.02 0.25 0.1 || rc=1
_check_wstatus "${P}b" rw || rc=1
_result "e) a commit while a worker's allocating write is in flight" $rc

# --- f) ----------------------------------------------------------------------
rc=0
c0=$(_wstat "${P}c" commits)
python3 - "$DEV_C" <<'PYEOF' || { _qdiag "f) writes failed"; rc=1; }
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 4096)
for sec in (0, 1, 2, 5, 6, 7, 20):
    buf[:] = os.urandom(4096)
    assert os.pwrite(fd, buf, sec * (2 << 20) + (12 << 10)) == 4096
os.close(fd)
PYEOF
commits=$(($(_wstat "${P}c" commits) - c0))
[ "$commits" -eq 0 ] || { _qdiag "f) $commits commits before the flush: not one run"; rc=1; }
_fsync "$DEV_C" || { _qdiag "f) fsync failed"; rc=1; }
_qdiag "f) stats: $(dmsetup message "${P}c" 0 stats | grep -E '^(commit|zeroed_tables|worker_allocs)' | tr '\n' ' ')"
_check_wstatus "${P}c" rw || rc=1
_result "f) one commit writes runs of L1 sectors" $rc

# --- g) ----------------------------------------------------------------------
# _rt_clusters DEV   refcount_table_clusters from the header of the image on
# DEV, read past the page cache (the target writes the header underneath it)
_rt_clusters()
{
	dd if="$1" of="$WORK/header" bs=4096 count=1 iflag=direct status=none &&
		_get_be "$WORK/header" 56 4
}

rc=0
l0=$(_wstat "${P}c" commit_locked)
n0=$(_wstat "${P}c" commits)
rt0=$(_rt_clusters "/dev/mapper/${P}cdelay") || rc=1
_fio_flushed g "$DEV_C" --iodepth=16 --bs=64k --offset=$((48 * M)) --size=$((16 * M)) \
	--number_ios=144 || rc=1
_fsync "$DEV_C" || rc=1
rt1=$(_rt_clusters "/dev/mapper/${P}cdelay") || rc=1
_qdiag "g) refcount table clusters $rt0 -> $rt1; stats: $(dmsetup message "${P}c" 0 stats | grep -E '^(commit|flushes)' | tr '\n' ' ')"
locked=$(($(_wstat "${P}c" commit_locked) - l0))
commits=$(($(_wstat "${P}c" commits) - n0))
[ "${rt1:-0}" -gt "${rt0:-0}" ] || { _qdiag "g) the refcount table did not grow: nothing tested"; rc=1; }
[ "$commits" -gt 1 ] || { _qdiag "g) $commits commits"; rc=1; }
[ "$locked" -eq 0 ] || { _qdiag "g) $locked of $commits commits kept updates out"; rc=1; }
_check_wstatus "${P}c" rw || rc=1
_result "g) new refcount blocks and table while commits write copies; no commit locked" $rc

# --- h) ----------------------------------------------------------------------
rc=0
for x in a b c; do
	img=$WORK/$x.qcow2
	dd if="/dev/mapper/$P$x" of="$WORK/dm.raw" bs=1M iflag=direct status=none || rc=1
	_dm_remove "$P$x" >/dev/null || rc=1
	_dm_remove "${P}${x}delay" >/dev/null || rc=1
	_wcheck "$img" || rc=1
	_wconvert "$img" "$WORK/qemu.raw" || rc=1
	if [ $rc -eq 0 ] && ! cmp -s "$WORK/dm.raw" "$WORK/qemu.raw"; then
		_qdiag "QEMU reads $img differently: $(cmp "$WORK/dm.raw" "$WORK/qemu.raw" | head -1)"
		rc=1
	fi
	rm -f "$WORK/dm.raw" "$WORK/qemu.raw"
done
if [ -r /proc/lockdep ]; then
	for class in "dm-qcow2 cluster lock" "dm-qcow2 l2_busy"; do
		grep -qF ": $class" /proc/lockdep ||
			{ _qdiag "h) lockdep has no class \"$class\""; rc=1; }
	done
	_qdiag "h) lockdep: $(grep -F ': dm-qcow2 ' /proc/lockdep | cut -d' ' -f2- | tr -s ' ' | tr '\n' ';')"
fi
_check_dmesg_clean || rc=1
_result "h) removed: qemu-img check exit 0, QEMU reads each image as its device did" $rc
ktap_finish
