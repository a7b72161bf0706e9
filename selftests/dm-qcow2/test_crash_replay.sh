#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_crash_replay.sh - crash consistency: replay a dm-log-writes log of the
# image device to every FLUSH/FUA point and check the image there.
#
# For each workload:
#   - a fresh qcow2 image (qemu-img) is written onto a region of the first
#     spare disk, and a log-writes device over that region (logging to the
#     second spare disk) becomes the image device of a read-write qcow2
#     mapping;
#   - qcow2_diffwork.py runs a seeded workload on the mapping and keeps a
#     journal of what every durable flush (an fsync/fdatasync that
#     returned) guarantees; after each one it sends the log a mark
#     "diffwork-K";
#   - the mapping and the log are removed, then tools/testing/log-writes/
#     replay-log replays the log onto a copy of the initial image and, at
#     every FLUSH/FUA entry (at most $QCOW2_CRASH_POINTS of them per
#     workload, spread evenly, the last one included), runs
#     `qcow2_diffwork.py crashcheck`; at a FLUSH point it also does so in
#     up to $QCOW2_CRASH_TORN torn states (replay-log --torn: of the writes
#     logged right before the flush, which a crash before it completes may
#     have kept in any part, only the last 1, 2, ... applied, the earlier
#     ones lost: a write order that needs a flush it does not send fails
#     there, not at the flushes).  crashcheck requires:
#       * `qemu-img check`: no corruption and no corrupt bit.  Leaked
#         clusters are counted and reported, not failed (a cluster freed in
#         the last commit may leak, as with QEMU).  With lazy_refcounts and
#         the dirty bit set, refcount errors are allowed if `qemu-img check
#         -r all` on a copy repairs them, and in the lazy_refcounts workload
#         at least one checked point must need that repair (refcount blocks
#         are not written at a flush);
#       * QEMU's view (qemu-img convert) holds every write acknowledged
#         before the last durable flush that completed before the point
#         (the last mark), and, where writes were in flight after it, one
#         of the values the sector had meanwhile: never stale or foreign
#         data;
#       * with an internal snapshot: the snapshot still reads as before;
#   - the fully replayed log equals what the disk holds at the end (the
#     log is complete), and that image passes `qemu-img check` with no
#     leaks, has a clean header and QEMU's view equals the reference.
#
# Workloads: the differential random mix (v3, 64 KiB clusters),
# allocation-heavy writes (4 KiB clusters), COW over a qcow2 backing file,
# an image with an internal snapshot, discard/write-zeroes heavy, refcount
# table growth (512-byte clusters, refcount_bits=64) and the lazy_refcounts
# table option.
#
# Needs two spare disks (run-vm.sh --disk 2G --disk 2G), the log-writes
# target and replay-log built on the host (`make -C
# tools/testing/log-writes`; the guest's tree is read-only).
#
# Environment: QCOW2_SEED (workload k uses seed + k), QCOW2_CASES=ERE,
# QCOW2_OPS_SCALE=PERCENT, QCOW2_CRASH_POINTS=N (default 5; 0: all),
# QCOW2_CRASH_TORN=N (torn states per FLUSH point, default 2; 0: none),
# QCOW2_DEADLINE=SECONDS per workload run (default 150), QCOW2_REPLAY_LOG
# (path of replay-log).

. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/qcow2_common.sh"
. "$(dirname "$0")/qcow2_write_common.sh"

_qcow2_init cmp
_require_dm_target log-writes
TOP=$(cd "$(dirname "$0")/../.." && pwd)
RL=${QCOW2_REPLAY_LOG:-$TOP/tools/testing/log-writes/replay-log}
[ -x "$RL" ] || _skip "replay-log is not built ($RL): run 'make -C tools/testing/log-writes' on the host"
DATA=$(_disk 1) || exit
LOGDEV=$(_disk 2) || exit

SEED=$(_wseed)
SCALE=${QCOW2_OPS_SCALE:-100}
CAP=${QCOW2_CRASH_POINTS:-5}
TORN=${QCOW2_CRASH_TORN:-2}
DEADLINE=${QCOW2_DEADLINE:-150}
echo "# seed $SEED (reproduce with QCOW2_SEED=$SEED; workload k uses seed $SEED+k)"

M=$((1 << 20))
# name | qemu-img create options | cluster size | virtual size | ops | kind |
# table option | operation weights (qcow2_diffwork.py run --weights)
#   kind: plain, qbacking (qcow2 base), snapshot (internal snapshot s1),
#         prefill (plain, plus 1900 KiB written by QEMU: with 512-byte
#         clusters and 64-bit refcounts the image is then just below the
#         2 MiB that one refcount table cluster covers, so the workload's
#         first allocations make the kernel grow the table)
WORKLOADS=(
	"diff v3 64k|cluster_size=64k|65536|$((16 * M))|100|plain||"
	"allocation-heavy 4k|cluster_size=4k|4096|$((16 * M))|80|plain||write=30,dwrite=30,discard=0,zeroout=0,flush=8,dropc=3,check=3"
	"COW over a qcow2 backing file|cluster_size=64k|65536|$((16 * M))|80|qbacking||"
	"internal snapshot|cluster_size=64k|65536|$((8 * M))|80|snapshot||"
	"discards and write-zeroes|cluster_size=64k|65536|$((16 * M))|100|plain||write=25,dwrite=10,discard=30,zeroout=20,flush=8,dropc=3,check=4"
	"refcount table growth (512, refcount_bits=64)|cluster_size=512,refcount_bits=64|512|$((4 * M))|70|prefill||write=40,dwrite=25,discard=4,zeroout=0,flush=6,dropc=2,check=3"
	"lazy_refcounts|cluster_size=64k|65536|$((16 * M))|100|plain|lazy_refcounts|write=35,dwrite=25,discard=0,zeroout=0,flush=8,dropc=3,check=3"
)

# _prepopulate IMG CS VSIZE   QEMU-written data and zero clusters
_prepopulate()
{
	local img=$1 cs=$2 vs=$3
	_qio "$img" "write -P 0x11 0 $((3 * cs))" \
		"write -P 0x22 $((vs / 2 + cs / 2)) $cs" \
		"write -z $((5 * cs)) $((2 * cs))" \
		"write -P 0x33 $((vs - 2 * cs)) $((2 * cs))"
}

# _build DIR KIND OPTS CS VSIZE SEED   $d/img.qcow2 (+ backing file,
# snapshot data) and $d/ref.raw, QEMU's view of it
_build()
{
	local d=$1 kind=$2 iopts=$3 cs=$4 vs=$5 seed=$6
	case "$kind" in
	plain | prefill)
		_mkimg "$d/img.qcow2" "$vs" "$iopts" &&
			_prepopulate "$d/img.qcow2" "$cs" "$vs" || return 1
		if [ "$kind" = prefill ]; then
			_qio "$d/img.qcow2" "write -P 0x44 $((vs / 4)) 1900k" || return 1
		fi
		;;
	qbacking)
		_diffwork fill "$d/base.raw" "$vs" --seed "$seed" --holes &&
			qemu-img convert -q -O qcow2 -o cluster_size=4k "$d/base.raw" "$d/base.qcow2" &&
			qemu-img create -q -f qcow2 -o "$iopts" -b "$d/base.qcow2" -F qcow2 \
				"$d/img.qcow2" &&
			_prepopulate "$d/img.qcow2" "$cs" "$vs" || return 1
		rm -f "$d/base.raw"
		;;
	snapshot)
		_diffwork fill "$d/src.raw" "$vs" --seed "$seed" --holes &&
			qemu-img convert -q -O qcow2 -o "$iopts" "$d/src.raw" "$d/img.qcow2" &&
			qemu-img snapshot -c s1 "$d/img.qcow2" &&
			_wconvert "$d/img.qcow2" "$d/snap.raw" -l snapshot.name=s1 || return 1
		cmp -s "$d/snap.raw" "$d/src.raw" ||
			{ _qdiag "snapshot s1 does not hold the source data"; return 1; }
		rm -f "$d/src.raw"
		_prepopulate "$d/img.qcow2" "$cs" "$vs" || return 1
		;;
	esac
	_wconvert "$d/img.qcow2" "$d/ref.raw"
}

# _reftable_clusters IMG   refcount_table_clusters of the header
_reftable_clusters()
{
	local -a b
	read -r -a b < <(od -An -tu1 -v -j56 -N4 "$1" | tr -s ' \n' '  ')
	echo $(((b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]))
}

# _run_wl IDX NAME OPTS CS VSIZE OPS KIND TABLE_OPTION WEIGHTS
_run_wl()
{
	local idx=$1 name=$2 iopts=$3 cs=$4 vs=$5 ops=$6 kind=$7 topt=$8 weights=$9
	local d="$WORK/wl$idx" seed=$((SEED + idx)) rc=0 region lw qc bdev table
	local t0 t1 tw tr status entries rrc cmd np nchk nleak nrep ninf nfail ndirty rt0 rt1 ntorn
	local -a targs=()

	lw="${QCOW2_DM_PREFIX}lw$idx"
	qc="${QCOW2_DM_PREFIX}c$idx"
	mkdir -p "$d"
	t0=${EPOCHREALTIME//[.,]/}
	_build "$d" "$kind" "$iopts" "$cs" "$vs" "$seed" || { _qdiag "building the image failed"; return 1; }
	rt0=$(_reftable_clusters "$d/img.qcow2")

	# The region of the data disk that the log-writes device covers; the
	# image grows inside it.
	region=$((vs * 2 + 8 * M))
	[ "$cs" -ge 4096 ] || region=$((vs * 3 + 8 * M))
	truncate -s "$region" "$d/img.qcow2" || return 1
	dd if="$d/img.qcow2" of="$DATA" bs=1M oflag=direct conv=fsync status=none &&
		dd if=/dev/zero of="$LOGDEV" bs=4096 count=1 oflag=direct conv=fsync status=none ||
		{ _qdiag "cannot write the initial image or clear the log"; return 1; }
	_dm_create "$lw" "0 $((region / 512)) log-writes $DATA $LOGDEV" ||
		{ _qdiag "cannot create the log-writes device"; return 1; }

	if [ "$kind" = qbacking ]; then
		bdev=$(_wloop_attach "$d/base.qcow2" --read-only) && [ -b "$bdev" ] ||
			{ _qdiag "cannot attach the backing file"; return 1; }
		targs+=(backing qcow2 "$bdev")
	fi
	[ -n "$topt" ] && targs+=("$topt")
	table=$(_qcow2_table "/dev/mapper/$lw" "$((vs / 512))" "${targs[@]}")
	_dm_create "$qc" "$table" || { _qdiag "cannot map: $table"; return 1; }

	ops=$((ops * SCALE / 100))
	t1=${EPOCHREALTIME//[.,]/}
	_wbg_wait "$DEADLINE" _diffwork run --seed "$seed" --dev "/dev/mapper/$qc" \
		--ref "$d/ref.raw" --ops "$ops" --cluster "$cs" --log "$d/ops.log" --compare \
		--journal "$d/j" --mark-dev "$lw" ${weights:+--weights "$weights"}
	case $? in
	0) ;;
	124) _qdiag "workload '$name' (seed $seed) abandoned: the device hangs"
	     return 1 ;;
	*) rc=1 ;;
	esac
	_check_wstatus "$qc" rw || rc=1
	tw=$(_elapsed "$t1")
	_dm_remove "$qc" || { _qdiag "cannot remove $qc"; return 1; }
	status=$(dmsetup status "$lw")
	entries=$(awk '{ print $4 }' <<<"$status")
	[[ $status == *logging_disabled* ]] &&
		{ _qdiag "log-writes stopped logging: $status"; rc=1; }
	_dm_remove "$lw" || { _qdiag "cannot remove $lw"; return 1; }
	[ -n "$bdev" ] && _loop_detach "$bdev" 2>/dev/null

	# What the disk holds at the end: a clean image with the reference data.
	dd if="$DATA" of="$d/final.qcow2" bs=1M count=$((region / M)) iflag=direct status=none
	_wcheck "$d/final.qcow2" || rc=1
	_wheader_clean "$d/final.qcow2" || rc=1
	qemu-img compare -q -f qcow2 -F raw "$d/final.qcow2" "$d/ref.raw" >/dev/null 2>&1 ||
		{ _qdiag "QEMU's view of the final image differs from the reference"; rc=1; }
	rt1=$(_reftable_clusters "$d/final.qcow2")
	if [ "$kind" = prefill ]; then
		_qdiag "refcount table: $rt0 -> $rt1 cluster(s)"
		[ "$rt1" -gt "$rt0" ] || { _qdiag "the refcount table did not grow"; rc=1; }
	fi

	# The checker must be able to fail: the final image is not what the
	# disk held at the first mark (done once, for the first workload).
	if [ "$idx" = 1 ]; then
		if _diffwork crashcheck "$d/final.qcow2" --journal "$d/j" --mark diffwork-0 >/dev/null; then
			_qdiag "self-check: crashcheck accepts the final image as the state before the workload"
			rc=1
		fi
	fi

	# Replay onto the initial image, checking at the crash points.
	t1=${EPOCHREALTIME//[.,]/}
	cp --sparse=always "$d/img.qcow2" "$d/replay.qcow2" || return 1
	cmd="python3 $(printf %q "$QCOW2_DIFFWORK_PY") crashcheck $(printf %q "$d/replay.qcow2")"
	cmd+=" --journal $(printf %q "$d/j") --results $(printf %q "$d/results")"
	[ "$topt" = lazy_refcounts ] && cmd+=" --lazy"
	[ "$kind" = snapshot ] && cmd+=" --snapshot s1=$(printf %q "$d/snap.raw")"
	: >"$d/results"
	local capargs=()
	[ "$CAP" -gt 0 ] && capargs=(--max-checks "$CAP")
	"$RL" --log "$LOGDEV" --replay "$d/replay.qcow2" "${capargs[@]}" --torn "$TORN" \
		--check-cmd "$cmd" >"$d/replay.out" 2>&1
	rrc=$?
	_wdiag_file "$d/replay.out"
	[ $rrc -eq 0 ] || { _qdiag "replay-log exit $rrc (1: a crash point failed)"; rc=1; }
	if [ $rrc -ne 1 ] && ! cmp -s "$d/replay.qcow2" "$d/final.qcow2"; then
		_qdiag "the replayed log differs from the disk ($(cmp "$d/replay.qcow2" "$d/final.qcow2" 2>&1 | head -1))"
		rc=1
	fi
	np=$(sed -n 's/.* of \([0-9]*\) check points checked.*/\1/p' "$d/replay.out")
	nchk=$(wc -l <"$d/results")
	nfail=$(grep -c ' FAIL$' "$d/results")
	nleak=$(awk '$10 > 0 { n++ } END { print n + 0 }' "$d/results")
	nrep=$(awk '$14 > 0 { n++ } END { print n + 0 }' "$d/results")
	ninf=$(awk '$16 > 0 { n++ } END { print n + 0 }' "$d/results")
	ndirty=$(awk '$12 > 0 { n++ } END { print n + 0 }' "$d/results")
	ntorn=$(awk '$18 != "-" { n++ } END { print n + 0 }' "$d/results")
	tr=$(_elapsed "$t1")
	[ "$nchk" -gt 0 ] || { _qdiag "no crash point was checked"; rc=1; }
	if [ "$topt" = lazy_refcounts ] && [ "$ndirty" -eq 0 ]; then
		_qdiag "lazy_refcounts: no checked crash point had the dirty bit set"
		rc=1
	fi
	# Lazy means refcount blocks stay in memory at a flush: some crash point
	# must show refcounts behind the L2 tables (repaired by check -r).
	if [ "$topt" = lazy_refcounts ] && [ "$nrep" -eq 0 ]; then
		_qdiag "lazy_refcounts: no checked crash point needed qemu-img check -r: refcount blocks written at every flush?"
		rc=1
	fi
	_qdiag "workload '$name': seed $seed, $ops ops, $entries log entries, crash points checked: $nchk ($ntorn of them torn) of ${np:-?} FLUSH/FUA points ($nfail failed, $nleak with leaked clusters, $ndirty with the dirty bit, $nrep needed check -r (lazy), $ninf with writes in flight); $(_elapsed "$t0") s (workload $tw s, replay+checks $tr s)"
	[ "$nleak" -eq 0 ] || _qdiag "leaks (allowed): $(awk '$10 > 0 { printf "entry %s: %s; ", $2, $10 }' "$d/results")"
	CRASH_TOTAL=$((CRASH_TOTAL + nchk))
	TORN_TOTAL=$((TORN_TOTAL + ntorn))
	if [ $rc -ne 0 ] && [ "${QCOW2_KEEP:-0}" = 1 ]; then
		_qdiag "kept $d"
	else
		rm -rf "$d"
	fi
	return $rc
}

CRASH_TOTAL=0
TORN_TOTAL=0
ktap_header
ktap_plan $((${#WORKLOADS[@]} + 1))
i=0
for w in "${WORKLOADS[@]}"; do
	i=$((i + 1))
	IFS='|' read -r name iopts cs vs ops kind topt weights <<<"$w"
	if [ -n "${QCOW2_CASES:-}" ] && ! [[ $name =~ $QCOW2_CASES ]]; then
		ktap_skip "crash replay: $name" "not selected by QCOW2_CASES"
		continue
	fi
	_qmark
	rc=0
	_run_wl "$i" "$name" "$iopts" "$cs" "$vs" "$ops" "$kind" "$topt" "$weights" || rc=1
	_check_dmesg_clean || rc=1
	_result "crash replay: $name" $rc
done
_qdiag "$CRASH_TOTAL crash points checked in all ($TORN_TOTAL torn); total $(_elapsed) s"
# Every commit writes metadata after the flush that covers the data and
# refcounts before it, so checked flushes after runs of writes are common:
# none at all would mean the torn states are not checked.
rc=0
if [ "$TORN" -gt 0 ] && [ "$CRASH_TOTAL" -gt 0 ] && [ "$TORN_TOTAL" -eq 0 ]; then
	_qdiag "no torn state was checked in any workload"
	rc=1
fi
_result "crash replay: torn states checked" $rc
ktap_finish
