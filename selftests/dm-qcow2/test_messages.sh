#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_messages.sh - the target's messages (Documentation/admin-guide/
# device-mapper/qcow2.rst, "Messages"): "stats" and "commit".
#
#   a) stats prints every documented counter, one "<name> <value>" line
#      each; unknown messages, and known ones with arguments, are refused
#      (dmsetup message fails) with a dmesg line, and the device stays rw;
#   b) the counters count what was done, exactly where a workload fixes it:
#      16 4 KiB writes into new clusters of an empty image (64 KiB clusters)
#      are 16 allocations (map() or worker) and 16 zero fills or zeroed
#      clusters, no copy; rewriting them is 16 writes in place in map() and
#      no allocation; a 1 MiB aligned write is 16 allocations in map()
#      (whole clusters, allocated together, written in one clone); a
#      discard of one cluster zeroes one, and the flush after it is counted,
#      commits and frees its host cluster; then, with no metadata dirty, an
#      fsync and a rewrite + fsync are clean flushes (no commit; the image's
#      loop device completes a flush), while a write to a new cluster +
#      fsync commits;
#   c) over a backing image with data, a read of that data counts a backing
#      read and a 4 KiB write into it copies one cluster (a worker: the
#      overlay has no L2 table there yet), while one into a hole of the
#      backing image is allocated in map() with a zero fill, and the next
#      4 KiB write into backing data is copied in map() (both read back
#      so, also through QEMU); in an overlay with extended L2
#      (2 KiB subclusters) whose L2 table exists, a 4 KiB aligned write into
#      a new cluster is allocated in map() with no copy, then a 1 KiB
#      write into another subcluster of it is done in map() too, with no
#      allocation and a copy of the rest of that subcluster, and the
#      cluster reads back as the writes amid the backing data (QEMU agrees
#      after removal); reading a compressed image counts compressed reads;
#   d) commit with lazy refcounts, while mapped: before it, QEMU does not see
#      the data (nothing was flushed); after it, no dirty slice, the dirty
#      bit is clear, `qemu-img check -U` exits 0 and QEMU reads exactly what
#      the device holds; then commit repeatedly while fio writes, and after
#      removal the image checks clean and reads the same; commit on a
#      read-only mapping succeeds and changes nothing.
# Every counter checked here is a delta between two stats taken around the
# work, so that reads by udev or blkid in between cannot make it pass.
# With QCOW2_SHARD=K/N only cases K, K+N, ... of a) + b), c), d) run (make
# check splits them between its kernels).

. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/qcow2_common.sh"
. "$(dirname "$0")/qcow2_write_common.sh"

_qcow2_init fio cmp blkdiscard
_gen_only && _skip "GEN_ONLY: this test has no image-only part"
M=$((1 << 20))
K=1024
DM=${QCOW2_DM_PREFIX}msg
NAMES="map_reads map_writes deferred backing_reads compressed_reads map_allocs
worker_allocs copies zero_fills zeroed_allocs zero_ahead zero_ahead_clusters
zero_ahead_waits zeroed_tables zeroed_clusters freed_clusters flushes clean_flushes commits
commit_usecs commit_blocked_usecs commit_locked commit_fua commit_copies commit_redirtied cache_shrunk"

ktap_header
# a) and b) (two results), c) and d): cases 1 to 3, and the dmesg check
nplan=$(($(_shard_count 3) + 1))
_shard_mine 1 && nplan=$((nplan + 1))
ktap_plan $nplan
_shard_note 3

# _stats NAME   read the counters into the associative array ST; fails on a
# line that is not "<name> <decimal>" or a missing documented name
declare -A ST ST0
_stats()
{
	local out line n v rc=0
	out=$(dmsetup message "$1" 0 stats) || { _qdiag "dmsetup message $1 0 stats failed"; return 1; }
	ST=()
	while IFS= read -r line; do
		if [[ ! "$line" =~ ^([a-z_]+)\ ([0-9]+)$ ]]; then
			_qdiag "stats of $1: bad line '$line'"
			rc=1
			continue
		fi
		n=${BASH_REMATCH[1]} v=${BASH_REMATCH[2]}
		[ -z "${ST[$n]:-}" ] || { _qdiag "stats of $1: $n twice"; rc=1; }
		ST[$n]=$v
	done <<<"$out"
	for n in $NAMES; do
		[ -n "${ST[$n]:-}" ] || { _qdiag "stats of $1: no counter $n"; rc=1; }
	done
	return $rc
}

# _mark NAME   remember the counters (ST0)
_mark()
{
	local n
	_stats "$1" || return 1
	ST0=()
	for n in "${!ST[@]}"; do
		ST0[$n]=${ST[$n]}
	done
}

# _delta NAME WHAT EXPR...   after _mark NAME: each EXPR "counter op N",
# op one of == >= (several counters joined by + are summed), holds for the
# change since the mark
_delta()
{
	local name=$1 what=$2 e lhs op want got c rc=0
	shift 2
	_stats "$name" || return 1
	for e in "$@"; do
		read -r lhs op want <<<"$e"
		got=0
		for c in ${lhs//+/ }; do
			got=$((got + ST[$c] - ST0[$c]))
		done
		case "$op" in
		==) [ "$got" -eq "$want" ] ;;
		'>=') [ "$got" -ge "$want" ] ;;
		*) false ;;
		esac || { _qdiag "$what: $lhs changed by $got, expected $op $want"; rc=1; }
	done
	return $rc
}

# _dev_flushes DEV   flush requests DEV completed (Documentation/block/stat.rst)
_dev_flushes()
{
	local f
	read -r -a f <"/sys/class/block/$(basename "$(readlink -f "$1")")/stat" || return 1
	echo "${f[15]:-}"
}

# _dd_at DEV OFF LEN BYTE   write LEN bytes of BYTE at OFF, direct
_dd_at()
{
	python3 - "$@" <<'PYEOF'
import mmap, os, sys
dev, off, n, b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4], 0)
buf = mmap.mmap(-1, n)
buf.write(bytes([b]) * n)
fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
assert os.pwrite(fd, buf, off) == n
os.close(fd)
PYEOF
}

# _reads DEV OFF...   read 4 KiB at each OFF, direct, one bio each
_reads()
{
	python3 - "$@" <<'PYEOF'
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 4096)
for off in sys.argv[2:]:
    assert os.preadv(fd, [buf], int(off)) == 4096
os.close(fd)
PYEOF
}

# _cluster_is FILE OFF HEAD BG LEN BYTE   the 64 KiB at OFF of FILE (a device:
# O_DIRECT) are BG bytes but for LEN bytes of BYTE at OFF + HEAD
_cluster_is()
{
	python3 - "$@" <<'PYEOF'
import mmap, os, stat, sys
path, off, head, bg, n, b, *more = sys.argv[1], *(int(a, 0) for a in sys.argv[2:])
flags = os.O_RDONLY | (os.O_DIRECT if stat.S_ISBLK(os.stat(path).st_mode) else 0)
fd = os.open(path, flags)
buf = mmap.mmap(-1, 65536)
assert os.preadv(fd, [buf], off) == 65536
want = bytes([bg]) * head + bytes([b]) * n + bytes([bg]) * (65536 - head - n)
for i in range(0, len(more), 3):
    h, n, b = more[i:i + 3]
    want = want[:h] + bytes([b]) * n + want[h + n:]
if bytes(buf) != want:
    i = next(i for i in range(65536) if buf[i] != want[i])
    print("# %s: byte %d of the cluster at %d is %#x, expected %#x" % (path, i, off, buf[i], want[i]))
    sys.exit(1)
PYEOF
}

# --- a) ----------------------------------------------------------------------
if _shard_mine 1; then
	rc=0
	IMG=$WORK/a.qcow2
	qemu-img create -q -f qcow2 -o cluster_size=64k "$IMG" $((64 * M)) && _wroom "$IMG" $((64 * M)) || rc=1
	[ $rc -eq 0 ] && { _wmap "$DM" "$IMG" || rc=1; }
	if [ $rc -eq 0 ]; then
		_stats "$DM" || rc=1
		_qmark
		for bad in "bogus" "stats now" "commit now" "STATS 1"; do
			# shellcheck disable=SC2086
			if dmsetup message "$DM" 0 $bad >/dev/null 2>&1; then
				_qdiag "message '$bad' was accepted"
				rc=1
			fi
		done
		_qdmesg_has "unrecognised message 'bogus'" || { _qdiag "no dmesg line for 'bogus'"; rc=1; }
		_check_wstatus "$DM" rw || rc=1
	fi
	_result "a) stats has every counter, bad messages refused" $rc
	[ $rc -eq 0 ] || { _wunmap "$DM"; ktap_finish; }

	# --- b) ----------------------------------------------------------------------
	rc=0
	_mark "$DM" || rc=1
	for c in $(seq 0 15); do
		_dd_at "$MAP_DEV" $((c * 64 * K + 8 * K)) 4096 $((0x40 + c)) || rc=1
	done
	_delta "$DM" "16 4k writes to new clusters" "map_allocs+worker_allocs == 16" \
		"zero_fills+zeroed_allocs == 16" "copies == 0" || rc=1
	_mark "$DM" || rc=1
	for c in $(seq 0 15); do
		_dd_at "$MAP_DEV" $((c * 64 * K + 8 * K)) 4096 $((0x60 + c)) || rc=1
	done
	_delta "$DM" "16 4k rewrites" "map_writes == 16" "map_allocs+worker_allocs == 0" \
		"deferred == 0" || rc=1
	_mark "$DM" || rc=1
	_dd_at "$MAP_DEV" $((4 * M)) $((1 * M)) 0x33 || rc=1
	_delta "$DM" "1 MiB aligned write" "map_allocs == 16" "worker_allocs == 0" \
		"zero_fills+zeroed_allocs+copies == 0" || rc=1
	_mark "$DM" || rc=1
	_reads "$MAP_DEV" $((8 * K)) $((32 * M)) || rc=1
	_delta "$DM" "2 reads" "map_reads >= 2" || rc=1
	_mark "$DM" || rc=1
	blkdiscard -o $((4 * M)) -l $((64 * K)) "$MAP_DEV" || { _qdiag "blkdiscard failed"; rc=1; }
	_fsync "$MAP_DEV" || rc=1
	_delta "$DM" "discard of one cluster, fsync" "zeroed_clusters == 1" "flushes >= 1" \
		"commits >= 1" "freed_clusters == 1" || rc=1
	[ "${ST[commit_usecs]}" -gt 0 ] || { _qdiag "commit_usecs is 0 after commits"; rc=1; }
	# Nothing dirty: flushes go to the device without a commit, until a
	# write changes metadata again.
	_mark "$DM" || rc=1
	f0=$(_dev_flushes "$MAP_IMGDEV")
	_fsync "$MAP_DEV" || rc=1
	f1=$(_dev_flushes "$MAP_IMGDEV")
	_delta "$DM" "fsync with nothing dirty" "flushes >= 1" "clean_flushes >= 1" \
		"commits == 0" "deferred == 0" || rc=1
	[ "${f1:-0}" -gt "${f0:-0}" ] ||
		{ _qdiag "fsync with nothing dirty: no flush reached $MAP_IMGDEV (${f0:-?} -> ${f1:-?})"; rc=1; }
	_mark "$DM" || rc=1
	_dd_at "$MAP_DEV" $((8 * K)) 4096 0x71 || rc=1
	_fsync "$MAP_DEV" || rc=1
	_delta "$DM" "4k rewrite, fsync" "map_writes == 1" "clean_flushes >= 1" \
		"commits == 0" || rc=1
	_mark "$DM" || rc=1
	_dd_at "$MAP_DEV" $((20 * M)) 4096 0x72 || rc=1
	_fsync "$MAP_DEV" || rc=1
	# One L2 slice to write: with FUA, the flush before it as its PREFLUSH.
	_delta "$DM" "4k write to a new cluster, fsync" "map_allocs+worker_allocs == 1" \
		"commits >= 1" "commit_fua >= 1" || rc=1
	_check_wstatus "$DM" rw || rc=1
	_wunmap "$DM"
	_wcheck "$IMG" || rc=1
	_result "b) allocation, in-place, batch, read, discard and flush counters" $rc
fi

# --- c) ----------------------------------------------------------------------
if _shard_mine 2; then
	rc=0
	BASE=$WORK/base.qcow2 OVL=$WORK/ovl.qcow2 CMP=$WORK/comp.qcow2
	qemu-img create -q -f qcow2 -o cluster_size=64k "$BASE" $((64 * M)) &&
		qemu-io -f qcow2 -c "write -P 0x5a 0 4M" "$BASE" >/dev/null &&
		qemu-img create -q -f qcow2 -o cluster_size=64k -b "$BASE" -F qcow2 "$OVL" &&
		_wroom "$OVL" $((64 * M)) || { _qdiag "cannot make the overlay"; rc=1; }
	[ $rc -eq 0 ] && { _wmap "$DM" "$OVL" "qcow2:$BASE" || rc=1; }
	if [ $rc -eq 0 ]; then
		_mark "$DM" || rc=1
		_reads "$MAP_DEV" $((64 * K)) $((128 * K)) || rc=1
		_delta "$DM" "2 reads of backing data" "backing_reads >= 2" || rc=1
		_mark "$DM" || rc=1
		_dd_at "$MAP_DEV" $((256 * K + 4 * K)) 4096 0x77 || rc=1
		_delta "$DM" "4k write into a backing cluster" "copies == 1" "worker_allocs == 1" \
			"map_allocs == 0" || rc=1
		# Where the backing file has nothing, the fill is zeros: map().
		_mark "$DM" || rc=1
		_dd_at "$MAP_DEV" $((32 * M + 8 * K)) 4096 0x44 || rc=1
		_delta "$DM" "4k write over a hole of the backing file" "map_allocs == 1" \
			"copies+worker_allocs == 0" "zero_fills+zeroed_allocs == 1" || rc=1
		_cluster_is "$MAP_DEV" $((32 * M)) 8192 0 4096 0x44 || rc=1
		# The L2 table is there now: the next copy-on-write is made in map().
		_mark "$DM" || rc=1
		_dd_at "$MAP_DEV" $((448 * K + 4 * K)) 4096 0x78 || rc=1
		_delta "$DM" "4k write into a backing cluster in map()" "copies == 1" \
			"map_allocs == 1" "worker_allocs+zero_fills+zeroed_allocs == 0" || rc=1
		_cluster_is "$MAP_DEV" $((448 * K)) 4096 0x5a 4096 0x78 || rc=1
		_wunmap "$DM"
		_wcheck "$OVL" || rc=1
		_wconvert "$OVL" "$WORK/ovl.raw" && _cluster_is "$WORK/ovl.raw" $((32 * M)) 8192 0 4096 0x44 ||
			{ _qdiag "QEMU reads the cluster over the hole wrong"; rc=1; }
		_cluster_is "$WORK/ovl.raw" $((448 * K)) 4096 0x5a 4096 0x78 ||
			{ _qdiag "QEMU reads the cluster copied in map() wrong"; rc=1; }
		rm -f "$WORK/ovl.raw"
	fi
	XOVL=$WORK/xovl.qcow2
	qemu-img create -q -f qcow2 -o cluster_size=64k,extended_l2=on -b "$BASE" -F qcow2 "$XOVL" &&
		_wroom "$XOVL" $((64 * M)) || { _qdiag "cannot make the extended L2 overlay"; rc=1; }
	if [ -f "$XOVL" ] && _wmap "$DM" "$XOVL" "qcow2:$BASE"; then
		# The first write makes the L2 table (a worker); then the test.
		_dd_at "$MAP_DEV" $((192 * K)) 4096 0x66 || rc=1
		_mark "$DM" || rc=1
		_dd_at "$MAP_DEV" $((320 * K + 8 * K)) 4096 0x66 || rc=1
		_delta "$DM" "4k write into a new extended L2 cluster" "map_allocs == 1" \
			"copies+worker_allocs == 0" || rc=1
		_cluster_is "$MAP_DEV" $((320 * K)) 8192 0x5a 4096 0x66 ||
			{ _qdiag "extended L2 cluster reads back wrong"; rc=1; }
		# A subcluster of that cluster, partly: no allocation, a copy of the
		# rest of the subcluster from the backing image, in map().
		_mark "$DM" || rc=1
		_dd_at "$MAP_DEV" $((320 * K + 40 * K + 512)) 1024 0x67 || rc=1
		_delta "$DM" "1k write into a subcluster of that cluster" "map_writes == 1" \
			"copies == 1" "map_allocs+worker_allocs == 0" || rc=1
		_cluster_is "$MAP_DEV" $((320 * K)) 8192 0x5a 4096 0x66 $((40 * K + 512)) 1024 0x67 ||
			{ _qdiag "extended L2 cluster reads back wrong after the subcluster write"; rc=1; }
		_wunmap "$DM"
		_wcheck "$XOVL" || rc=1
		_wconvert "$XOVL" "$WORK/xovl.raw" &&
			_cluster_is "$WORK/xovl.raw" $((320 * K)) 8192 0x5a 4096 0x66 \
				$((40 * K + 512)) 1024 0x67 ||
			{ _qdiag "QEMU reads the extended L2 cluster wrong"; rc=1; }
		rm -f "$WORK/xovl.raw"
	else
		rc=1
	fi
	qemu-img convert -c -O qcow2 "$BASE" "$CMP" || { _qdiag "cannot make a compressed image"; rc=1; }
	if [ -f "$CMP" ] && _wmap "$DM" "$CMP" ro; then
		_mark "$DM" || rc=1
		_reads "$MAP_DEV" 0 $((1 * M)) || rc=1
		_delta "$DM" "2 reads of compressed clusters" "compressed_reads >= 2" || rc=1
		_wunmap "$DM"
	else
		rc=1
	fi
	_result "c) backing reads, copy-on-write, extended L2 in map(), compressed reads" $rc
fi

# --- d) ----------------------------------------------------------------------
if _shard_mine 3; then
	rc=0
	IMG=$WORK/d.qcow2 DEVRAW=$WORK/dev.raw QRAW=$WORK/qemu.raw
	qemu-img create -q -f qcow2 -o cluster_size=64k "$IMG" $((64 * M)) && _wroom "$IMG" $((64 * M)) || rc=1
	[ $rc -eq 0 ] && { _wmap "$DM" "$IMG" lazy_refcounts || rc=1; }
	if [ $rc -eq 0 ]; then
		for c in 0 3 17 200 511; do
			_dd_at "$MAP_DEV" $((c * 64 * K + 12 * K)) 8192 $((0x10 + c % 200)) || rc=1
		done
		_dd_at "$MAP_DEV" $((40 * M)) $((2 * M)) 0x99 || rc=1
		# Nothing flushed yet: the image on disk does not have the data.
		qemu-img convert -U -O raw "$IMG" "$QRAW" && dd if="$MAP_DEV" of="$DEVRAW" bs=1M status=none || rc=1
		if cmp -s "$QRAW" "$DEVRAW"; then
			_qdiag "QEMU already reads the data before any flush or commit"
			rc=1
		fi
		_mark "$DM" || rc=1
		dmsetup message "$DM" 0 commit || { _qdiag "commit message failed"; rc=1; }
		_delta "$DM" "commit" "commits >= 1" || rc=1
		_check_wstatus "$DM" rw || rc=1
		[ "$WS_DIRTY" = 0 ] || { _qdiag "after commit: $WS_DIRTY dirty slices"; rc=1; }
		! _wimg_flag "$IMG" dirty || { _qdiag "after commit: the dirty bit is set"; rc=1; }
		_wcheck "$IMG" || rc=1
		rm -f "$QRAW"
		_wconvert "$IMG" "$QRAW" && _wcompare "$QRAW" "$DEVRAW" || rc=1
		# Commits while writes go on: each must succeed.
		fio --name=w --filename="$MAP_DEV" --ioengine=libaio --iodepth=8 --direct=1 \
			--rw=randwrite --bs=4k --size=$((32 * M)) --offset=$((16 * M)) \
			--number_ios=3000 --randrepeat=0 --output="$WORK/fio.out" >/dev/null &
		fpid=$!
		n=0
		while kill -0 $fpid 2>/dev/null && [ $n -lt 50 ]; do
			dmsetup message "$DM" 0 commit || { _qdiag "commit $n under load failed"; rc=1; break; }
			n=$((n + 1))
		done
		wait $fpid || { _qdiag "fio failed: $(grep -i err "$WORK/fio.out" | head -3)"; rc=1; }
		_qdiag "$n commits while fio ran"
		dmsetup message "$DM" 0 commit || rc=1
		_wcheck "$IMG" || rc=1
		dd if="$MAP_DEV" of="$DEVRAW" bs=1M status=none || rc=1
		_wunmap "$DM"
		_wcheck "$IMG" || rc=1
		_wheader_clean "$IMG" || rc=1
		rm -f "$QRAW"
		_wconvert "$IMG" "$QRAW" && _wcompare "$QRAW" "$DEVRAW" || rc=1
		# Read-only: nothing to write, success, the file unchanged.
		sum=$(md5sum <"$IMG")
		if _wmap "$DM" "$IMG" ro; then
			dmsetup message "$DM" 0 commit || { _qdiag "commit on a read-only mapping failed"; rc=1; }
			_wunmap "$DM"
			[ "$(md5sum <"$IMG")" = "$sum" ] || { _qdiag "read-only commit changed the image"; rc=1; }
		else
			rc=1
		fi
	fi
	_wunmap "$DM"
	rm -f "$QRAW" "$DEVRAW"
	_result "d) commit with lazy refcounts: consistent image while mapped, under load" $rc
fi

rc=0
_check_dmesg_clean || rc=1
_result "no kernel warnings" $rc

ktap_finish
