#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_write_batch.sh - large writes over clusters that have no host
# cluster yet, which the target allocates, writes and maps up to 16 at a time:
# in map() when the metadata is cached (qcow2_alloc_whole_in_map), else in
# the worker (qcow2_write_batch), both in dm-qcow2-write.c.
#
# Each case prepares an image with QEMU so that a batch must stop early: an
# allocated cluster, a zero cluster, a partly allocated cluster (extended
# L2), a backing file below, an L2 slice boundary, 4 KiB clusters (16
# batches per 1 MiB write), a version 2 image, a cluster whose lock a write
# in flight holds (case 6).  Then it writes, through the
# mapped device with O_DIRECT, aligned and unaligned runs of 1 MiB and less,
# the same to a raw reference, and requires `qemu-img check` to be clean
# and QEMU to read the reference back from the image.

. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/qcow2_common.sh"
. "$(dirname "$0")/qcow2_write_common.sh"

_qcow2_init cmp dd

M=$((1 << 20))
K=1024
DM=${QCOW2_DM_PREFIX}b
SIZE=$((16 * M))
DATA=$WORK/data
_pattern_file "$DATA" $((2 * M)) 7

ktap_header
ktap_plan 6

# The writes of every case, offset:length in bytes, in requests of up to
# 1 MiB; the data comes from $DATA at the offset modulo 1 MiB.
WRITES=(
	"0:$M"			# from cluster 0: stops where QEMU allocated
	"$((2 * M + 32 * K)):$M"	# unaligned start and end
	$((4 * M)):$((192 * K))	# three clusters
	$((8 * M - 128 * K)):$((512 * K))	# across 8 MiB
	$((12 * M)):$((2 * M))	# two 1 MiB requests' worth in one write
)

_apply()
{
	local dev=$1 conv=$2 w off len
	for w in "${WRITES[@]}"; do
		off=${w%%:*}
		len=${w#*:}
		dd if="$DATA" of="$dev" bs=$M iflag=skip_bytes,count_bytes \
			oflag="seek_bytes$conv" skip=$((off % M)) seek="$off" count="$len" \
			conv=notrunc status=none || { _qdiag "dd $w to $dev failed"; return 1; }
	done
}

# _case DESC IMG [BACKING]   map IMG (over BACKING), write, check
_case()
{
	local desc=$1 img=$2 backing=${3:-} rc=0 ref=$WORK/ref.raw
	local -a spec=()

	_qmark
	[ -n "$backing" ] && spec=("qcow2:$backing")
	_wconvert "$img" "$ref" || rc=1
	_wroom "$img" $SIZE || rc=1
	if [ $rc -eq 0 ] && _wmap "$DM" "$img" "${spec[@]}"; then
		_apply "$MAP_DEV" ,direct || rc=1
		_wunmap "$DM"
		_apply "$ref" "" || rc=1
		_wcheck "$img" || rc=1
		_wconvert "$img" "$WORK/out.raw" || rc=1
		if ! cmp -s "$WORK/out.raw" "$ref"; then
			_qdiag "$desc: QEMU reads other data: $(cmp "$WORK/out.raw" "$ref" 2>&1 | head -1)"
			rc=1
		fi
	else
		_wunmap "$DM"
		rc=1
	fi
	_check_dmesg_clean || rc=1
	rm -f "$ref" "$WORK/out.raw"
	_result "$desc" $rc
}

# 1. 64 KiB clusters: cluster 3 allocated (the batch from 0 takes 0-2),
#    cluster 5 a zero cluster (taken), cluster 9 allocated at 2 MiB + 576k.
IMG=$WORK/a.qcow2
_mkimg "$IMG" $SIZE cluster_size=64k &&
	_qio "$IMG" "write -q -P 0x11 $((192 * K)) 4k" "write -q -z $((320 * K)) 64k" \
		"write -q -P 0x12 $((2 * M + 576 * K)) 64k" "write -q -P 0x13 $((12 * M + M)) 4k"
_case "64k clusters, allocated and zero clusters in the way" "$IMG"

# 2. extended L2 over a backing file: a partly allocated cluster stops the
#    batch; clusters the backing file has are overwritten whole.
BASE=$WORK/base.qcow2
IMG=$WORK/b.qcow2
_mkimg "$BASE" $SIZE cluster_size=64k && _qio "$BASE" "write -q -P 0x21 0 $SIZE" &&
	_mkimg "$IMG" $SIZE "cluster_size=64k,extended_l2=on,backing_file=$BASE,backing_fmt=qcow2" &&
	_qio "$IMG" "write -q -P 0x22 $((64 * K + 8 * K)) 4k" "write -q -P 0x23 $((4 * M + 64 * K)) 2k"
_case "extended L2 over a backing file, partly allocated clusters in the way" "$IMG" "$BASE"

# 3. 4 KiB clusters: a 1 MiB write is 32 batches; 2 MiB across the end of
#    an L2 slice (512 entries of 8 bytes = 2 MiB of guest space).
IMG=$WORK/c.qcow2
_mkimg "$IMG" $SIZE cluster_size=4k && _qio "$IMG" "write -q -P 0x31 $((28 * K)) 4k"
_case "4k clusters, batches across L2 slices" "$IMG"

# 4. a version 2 image (no zero clusters)
IMG=$WORK/d.qcow2
_mkimg "$IMG" $SIZE compat=0.10,cluster_size=64k && _qio "$IMG" "write -q -P 0x41 $((256 * K)) 64k"
_case "version 2 image" "$IMG"

# 5. the same writes again over what case 1 left: every cluster allocated,
#    nothing to batch; the data must still land.
IMG=$WORK/a.qcow2
_case "64k clusters, rewritten in place" "$IMG"

# 6. a cluster locked by a write in flight: a write of cluster 5 is
#    allocated in map(), which holds the cluster's lock until its data is
#    written, and dm-delay under the image holds every write back 2 s.  A
#    1 MiB write from 0 meanwhile allocates clusters 0-4 together in map()
#    (which only tries the locks, so it ends before 5 and cuts the bio
#    there; clusters 0-5 have distinct lock bits); the rest of the bio goes
#    to the worker, which waits for 5 in the one-cluster path (an
#    overwrite by then) and batches 6-15.  Requires the scenario to have
#    happened: the cluster 5 write allocated in map() and still in flight
#    when the 1 MiB write was issued, then 6 allocations in map() and 10
#    by the worker.  The writes before the 1 MiB one cover
#    whole clusters, so that nothing is zeroed ahead (the device may have
#    write-zeroes), which would keep allocations out of map() meanwhile.
_held()
{
	local img=$WORK/f.qcow2 ref=$WORK/ref.raw dm=${DM}f delay=${DM}fdelay
	local dev=/dev/mapper/${DM}f loop map wk pid rc=0

	_mkimg "$img" $SIZE cluster_size=64k && _wroom "$img" $SIZE &&
		_wconvert "$img" "$ref" || return 1
	loop=$(_wimg_attach "$img") &&
		_dm_create "$delay" "0 $(blockdev --getsz "$loop") delay $loop 0 0 $loop 0 2000" &&
		_dm_create "$dm" "$(_qcow2_table "/dev/mapper/$delay" $((SIZE / 512)))" ||
		{ _qdiag "cannot map the image over dm-delay"; return 1; }
	# The L2 table first (the worker makes it), so that map() can allocate.
	dd if="$DATA" of="$dev" bs=64k count=1 seek=20 oflag=direct status=none &&
		dd if="$DATA" of="$ref" bs=64k count=1 seek=20 conv=notrunc status=none ||
		{ _qdiag "the first write failed"; return 1; }
	map=$(_wstat "$dm" map_allocs) wk=$(_wstat "$dm" worker_allocs)
	dd if="$DATA" of="$dev" bs=64k count=1 skip=3 seek=5 oflag=direct status=none &
	pid=$!
	sleep 0.5
	if ! kill -0 "$pid" 2>/dev/null; then
		_qdiag "the write of cluster 5 ended before the 1 MiB write began: the delay is too short here"
		rc=1
	fi
	dd if="$DATA" of="$dev" bs=$M count=1 oflag=direct status=none || rc=1
	wait "$pid" || rc=1
	map=$(($(_wstat "$dm" map_allocs) - map))
	wk=$(($(_wstat "$dm" worker_allocs) - wk))
	_qdiag "allocations in map(): $map, by the worker: $wk"
	[ "$map" -eq 6 ] || { _qdiag "expected clusters 5, then 0-4 to be allocated in map()"; rc=1; }
	[ "$wk" -eq 10 ] || { _qdiag "expected 10 clusters allocated by the worker"; rc=1; }
	_dm_remove "$dm" >/dev/null || rc=1
	_dm_remove "$delay" >/dev/null || rc=1
	dd if="$DATA" of="$ref" bs=64k count=1 skip=3 seek=5 conv=notrunc status=none &&
		dd if="$DATA" of="$ref" bs=$M count=1 conv=notrunc status=none || rc=1
	[ $rc -eq 0 ] || return 1
	_wcheck "$img" || rc=1
	_wconvert "$img" "$WORK/out.raw" || rc=1
	cmp -s "$WORK/out.raw" "$ref" ||
		{ _qdiag "QEMU reads other data: $(cmp "$WORK/out.raw" "$ref" 2>&1 | head -1)"; rc=1; }
	rm -f "$ref" "$WORK/out.raw"
	return $rc
}

F_NAME="a batch meets a cluster locked by a write in flight"
if _have_dm_target delay; then
	_qmark
	rc=0
	_held || rc=1
	_check_dmesg_clean || rc=1
	_result "$F_NAME" $rc
else
	ktap_skip "$F_NAME" "no dm-delay target in this kernel"
fi

ktap_finish
