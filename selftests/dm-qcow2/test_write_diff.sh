#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_write_diff.sh - differential random workload through a writable
# dm-qcow2 mapping.
#
# For every case of a matrix of image kinds, qcow2_diffwork.py applies one
# seeded sequence of a few hundred operations both to /dev/mapper/NAME and to
# a raw reference file: buffered writes (unaligned, 512-aligned,
# cluster-straddling, 512 B .. 256 KiB, random / constant / zero data),
# O_DIRECT writes, BLKDISCARD and BLKZEROOUT (partial clusters, whole
# clusters, runs), fsync / fdatasync / BLKFLSBUF flushes, page cache drops
# (so that unaligned writes read-modify-write through the target) and
# O_DIRECT read checks against the reference as it goes.  The reference
# starts as QEMU's view of the image (qemu-img convert), so pre-existing
# data, backing files, compressed clusters and snapshots are all covered.
#
# Then, per case:
#   - the whole device equals the reference (O_DIRECT reads);
#   - the status is still "rw" with io_errors 0 and no corrupt/no_space;
#   - after removing the device, `qemu-img check` exits 0 (no corruption
#     and no leaked clusters), the header has neither the dirty nor the
#     corrupt bit, and QEMU's view equals the reference (`qemu-img
#     compare`; on a difference the first differing byte and the logged
#     operations that covered it are printed);
#   - with an internal snapshot: the snapshot still holds its data
#     (convert -l snapshot.name=s1), `qemu-img snapshot -l` lists it, and
#     `qemu-img snapshot -a s1` on a copy brings back the snapshot's data.
#
# Matrix: v3 64k, v2 (compat=0.10) 64k, v3 512 B / 4k / 2M clusters,
# extended L2, refcount_bits 1 (4k) / 16 (the default) / 64 (with 512 B
# clusters: the refcount table has to grow several times), a qcow2 backing
# file (plain
# and extended L2 overlays, and a v2 overlay, where discard leaves data as
# it is: those ranges are compared as "don't care"), a raw backing file,
# deflate and zstd compressed images, an image with an internal snapshot,
# and the metadata cache at 64 KiB (cache pressure, writeback on eviction)
# and 1 MiB, and the lazy_refcounts table option (the dirty bit must be
# clear again after removal).
#
# Environment: QCOW2_SEED=N reproduces a run (the seed is printed; case k
# uses seed N+k); QCOW2_CASES=ERE runs only the cases whose name matches;
# QCOW2_OPS_SCALE=PERCENT scales the number of operations (default 100);
# QCOW2_DEADLINE=SECONDS: a workload still running after that long (default
# 150) fails its case as hung (blocked tasks are dumped with sysrq-w) and
# the test goes on with the next case.

. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/qcow2_common.sh"
. "$(dirname "$0")/qcow2_write_common.sh"

_qcow2_init cmp

SEED=$(_wseed)
SCALE=${QCOW2_OPS_SCALE:-100}
# seconds one workload may take before the case is given up as hung
DEADLINE=${QCOW2_DEADLINE:-150}
echo "# seed $SEED (reproduce with QCOW2_SEED=$SEED; case k uses seed $SEED+k)"

M=$((1 << 20))
# name | qemu-img create options | cluster size | virtual size | ops | kind |
# table options
#   kind: plain, qbacking (qcow2 base), rbacking (raw base), compressed,
#         snapshot; plain+pressure: the metadata cache must fill up
CASES=(
	"v3 64k|cluster_size=64k|65536|$((16 * M))|300|plain|"
	"v2 64k|compat=0.10,cluster_size=64k|65536|$((16 * M))|300|plain|"
	"v3 512|cluster_size=512|512|$((8 * M))|150|plain|"
	"v3 4k refcount_bits=1|cluster_size=4k,refcount_bits=1|4096|$((16 * M))|250|plain|"
	"v3 2M|cluster_size=2M|$((2 * M))|$((32 * M))|200|plain|"
	"v3 64k extended_l2|cluster_size=64k,extended_l2=on|65536|$((16 * M))|300|plain|"
	"refcount_bits=64 512 (refcount table grows)|cluster_size=512,refcount_bits=64|512|$((4 * M))|120|plain|"
	"qcow2 backing 64k over 4k|cluster_size=64k|65536|$((16 * M))|300|qbacking|"
	"qcow2 backing extended_l2|cluster_size=64k,extended_l2=on|65536|$((16 * M))|300|qbacking|"
	"v2 qcow2 backing|compat=0.10,cluster_size=64k|65536|$((16 * M))|250|qbacking|"
	"raw backing|cluster_size=64k|65536|$((16 * M))|300|rbacking|"
	"compressed deflate 64k|cluster_size=64k|65536|$((16 * M))|300|compressed|"
	"compressed zstd 4k|cluster_size=4k,compression_type=zstd|4096|$((8 * M))|200|compressed|"
	"internal snapshot 64k|cluster_size=64k|65536|$((16 * M))|300|snapshot|"
	"cache_size 65536|cluster_size=64k|65536|$((16 * M))|300|plain|cache_size:65536"
	"cache_size 65536 4k (cache pressure)|cluster_size=4k|4096|$((48 * M))|250|plain+pressure|cache_size:65536"
	"cache_size 1M|cluster_size=64k|65536|$((16 * M))|300|plain|cache_size:1048576"
	"lazy_refcounts|cluster_size=64k|65536|$((16 * M))|300|plain|lazy_refcounts"
)

# _prepopulate IMG CS VSIZE   QEMU-written data, zero clusters and a
# discard, so that the workload also meets clusters it did not allocate.
_prepopulate()
{
	local img=$1 cs=$2 vs=$3
	_qio "$img" "write -P 0x11 0 $((3 * cs))" \
		"write -P 0x22 $((vs / 2 + cs / 2)) $cs" \
		"write -z $((5 * cs)) $((2 * cs))" \
		"write -P 0x33 $((vs - 2 * cs)) $((2 * cs))" \
		"discard $((vs - cs)) $cs"
}

# _build CASE_DIR KIND OPTS CS VSIZE SEED   make $d/img.qcow2 (and backing
# files) and set BACKING_SPECS; $d/ref.raw is QEMU's view of the image.
_build()
{
	local d=$1 kind=$2 opts=$3 cs=$4 vs=$5 seed=$6
	BACKING_SPECS=()
	case "$kind" in
	plain)
		_mkimg "$d/img.qcow2" "$vs" "$opts" || return 1
		_prepopulate "$d/img.qcow2" "$cs" "$vs" || return 1
		;;
	qbacking)
		_diffwork fill "$d/base.raw" "$vs" --seed "$seed" --holes || return 1
		qemu-img convert -q -O qcow2 -o cluster_size=4k "$d/base.raw" "$d/base.qcow2" || return 1
		rm -f "$d/base.raw"
		qemu-img create -q -f qcow2 -o "$opts" -b "$d/base.qcow2" -F qcow2 \
			"$d/img.qcow2" || return 1
		_prepopulate "$d/img.qcow2" "$cs" "$vs" || return 1
		BACKING_SPECS=("qcow2:$d/base.qcow2")
		;;
	rbacking)
		_diffwork fill "$d/base.raw" "$vs" --seed "$seed" --holes || return 1
		qemu-img create -q -f qcow2 -o "$opts" -b "$d/base.raw" -F raw \
			"$d/img.qcow2" || return 1
		_prepopulate "$d/img.qcow2" "$cs" "$vs" || return 1
		BACKING_SPECS=("raw:$d/base.raw")
		;;
	compressed)
		_diffwork fill "$d/src.raw" "$vs" --seed "$seed" --compressible --holes || return 1
		qemu-img convert -q -c -O qcow2 -o "$opts" "$d/src.raw" "$d/img.qcow2" || return 1
		rm -f "$d/src.raw"
		_expect_stats "$d/img.qcow2" compressed=16 || return 1
		;;
	snapshot)
		_diffwork fill "$d/src.raw" "$vs" --seed "$seed" --holes || return 1
		qemu-img convert -q -O qcow2 -o "$opts" "$d/src.raw" "$d/img.qcow2" || return 1
		qemu-img snapshot -c s1 "$d/img.qcow2" || return 1
		# s1's data, as QEMU sees it before the kernel writes anything
		_wconvert "$d/img.qcow2" "$d/snap.raw" -l snapshot.name=s1 || return 1
		cmp -s "$d/snap.raw" "$d/src.raw" ||
			{ _qdiag "snapshot s1 does not hold the source data"; return 1; }
		rm -f "$d/src.raw"
		# some active-layer changes after the snapshot (COW done by QEMU)
		_prepopulate "$d/img.qcow2" "$cs" "$vs" || return 1
		;;
	esac
	_wconvert "$d/img.qcow2" "$d/ref.raw"
}

_snapshot_checks()
{
	local d=$1 rc=0 out
	out=$(qemu-img snapshot -l "$d/img.qcow2" 2>&1) || {
		_qdiag "qemu-img snapshot -l failed: $out"
		rc=1
	}
	echo "$out" | grep -qw s1 || { _qdiag "snapshot s1 not listed: $out"; rc=1; }
	_wconvert "$d/img.qcow2" "$d/snapout.raw" -l snapshot.name=s1 &&
		cmp "$d/snapout.raw" "$d/snap.raw" >"$d/cmp.out" 2>&1 ||
		{ _qdiag "snapshot s1 changed: $(cat "$d/cmp.out")"; rc=1; }
	rm -f "$d/snapout.raw"
	cp --sparse=always "$d/img.qcow2" "$d/copy.qcow2"
	out=$(qemu-img snapshot -a s1 "$d/copy.qcow2" 2>&1) ||
		{ _qdiag "qemu-img snapshot -a s1 failed: $out"; rc=1; }
	_wcheck "$d/copy.qcow2" || rc=1
	out=$(qemu-img compare -f qcow2 -F raw "$d/copy.qcow2" "$d/snap.raw" 2>&1) ||
		{ _qdiag "snapshot -a s1 on a copy does not give the snapshot data: $out"; rc=1; }
	rm -f "$d/copy.qcow2"
	return $rc
}

# _run_case IDX NAME OPTS CS VSIZE OPS KIND TABLE_SPECS
_run_case()
{
	local idx=$1 name=$2 opts=$3 cs=$4 vs=$5 ops=$6 kind=${7%+*} tspecs=$8
	local pressure=${7#"$kind"}
	local d="$WORK/case$idx" dm="${QCOW2_DM_PREFIX}w$idx" seed=$((SEED + idx))
	local rc=0 t0 t1 tb tm tr v2b="" specs=() want=$d/ref.raw

	mkdir -p "$d"
	t0=${EPOCHREALTIME//[.,]/}
	_build "$d" "$kind" "$opts" "$cs" "$vs" "$seed" || { _qdiag "building the image failed"; return 1; }
	tb=$(_elapsed "$t0")
	t1=${EPOCHREALTIME//[.,]/}
	[ "$kind" = qbacking ] || [ "$kind" = rbacking ] &&
		[[ $opts == *compat=0.10* ]] && v2b=1
	specs=("${BACKING_SPECS[@]}")
	[ -n "$tspecs" ] && specs+=("$tspecs")
	_wroom "$d/img.qcow2" "$vs" || return 1
	_wmap "$dm" "$d/img.qcow2" "len:$((vs / 512))" "${specs[@]}" || return 1
	tm=$(_elapsed "$t1")
	t1=${EPOCHREALTIME//[.,]/}

	# the workload, then the whole device against the reference
	ops=$((ops * SCALE / 100))
	_wbg_wait "$DEADLINE" _diffwork run --seed "$seed" --dev "$MAP_DEV" \
		--ref "$d/ref.raw" --ops "$ops" --cluster "$cs" --log "$d/ops.log" --compare \
		${v2b:+--discard-undefined} ${v2b:+--mask-out "$d/mask"}
	case $? in
	0) ;;
	124) _qdiag "case '$name' (seed $seed) abandoned: the device hangs"
	     return 1 ;;
	*) rc=1 ;;
	esac
	if [ -n "$v2b" ]; then
		# "don't care" ranges: QEMU's view must be exactly what the
		# device reads
		_qdiag "$(wc -l <"$d/mask") discarded range(s) compared as don't care"
		dd if="$MAP_DEV" of="$d/dev.raw" bs=1M iflag=direct status=none ||
			{ _qdiag "cannot read $MAP_DEV"; rc=1; }
		want=$d/dev.raw
	fi
	_check_wstatus "$dm" rw || rc=1
	_qdiag "status: $WS_LINE"
	if [ -n "$pressure" ] && ! _wcache_pressured; then
		_qdiag "the metadata cache never filled up: no cache pressure tested"
		rc=1
	fi
	_wunmap "$dm"
	tr=$(_elapsed "$t1")
	t1=${EPOCHREALTIME//[.,]/}

	# QEMU's view of the image the kernel wrote
	_wcheck "$d/img.qcow2" || rc=1
	_wheader_clean "$d/img.qcow2" || rc=1
	if ! qemu-img compare -q -f qcow2 -F raw "$d/img.qcow2" "$want" >/dev/null 2>&1; then
		_qdiag "QEMU's view differs from the reference"
		_wconvert "$d/img.qcow2" "$d/out.raw" &&
			_wcompare "$d/out.raw" "$want" --log "$d/ops.log" --cluster "$cs"
		rc=1
	fi
	[ "$kind" = snapshot ] && { _snapshot_checks "$d" || rc=1; }
	_qdiag "case '$name': seed $seed, $ops ops, $(_elapsed "$t0") s (build $tb, map $tm, run+compare $tr, qemu checks $(_elapsed "$t1"))"
	if [ $rc -ne 0 ] && [ "${QCOW2_KEEP:-0}" = 1 ]; then
		_qdiag "kept $d"
	else
		rm -rf "$d"
	fi
	return $rc
}

ktap_header
ktap_plan "$(_shard_count ${#CASES[@]})"
_shard_note ${#CASES[@]}
i=0
for c in "${CASES[@]}"; do
	i=$((i + 1))
	_shard_mine "$i" || continue
	IFS='|' read -r name opts cs vs ops kind tspecs <<<"$c"
	if [ -n "${QCOW2_CASES:-}" ] && ! [[ $name =~ $QCOW2_CASES ]]; then
		ktap_skip "diff $name" "not selected by QCOW2_CASES"
		continue
	fi
	_qmark
	rc=0
	_run_case "$i" "$name" "$opts" "$cs" "$vs" "$ops" "$kind" "$tspecs" || rc=1
	_check_dmesg_clean || rc=1
	_result "diff $name" $rc
done
_qdiag "total $(_elapsed) s"
ktap_finish
