#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_read_matrix.sh - read path over a matrix of image layouts.
#
# Covers qcow2 v2 and v3, cluster sizes 512 B .. 2 MiB, refcount widths
# 1..64 bits, extended L2 (v3, cluster >= 16 KiB), preallocation=metadata and
# virtual sizes that are not a multiple of the cluster size.  Every image gets
# the same qemu-io workload scaled to its cluster size: pattern-file data
# (non-uniform bytes) and uniform patterns at unaligned and cluster-straddling
# ranges, write-zeroes with and without unmap on allocated and unallocated
# clusters, partial-cluster and subcluster zeroing, cluster-aligned discards,
# a write into a zeroed cluster, a range crossing an L2-table boundary and the
# tail of the disk.  Each image is mapped read-only (some with a small
# cache_size) and checked against `qemu-img convert -O raw`: the status line,
# the table round trip, a battery of buffered/direct reads, the whole device.
#
# QCOW2_ONLY="1|5|30" runs only those case numbers (the others are skipped);
# QCOW2_TIMING=1 prints per-case and per-phase times.
#
# GEN_ONLY=1: build every image on the host (no root/module needed) and
# validate the oracles instead: qemu-img check, the same workload replayed by
# qemu-io on a raw file must equal the converted reference, the image must
# contain the cluster types the case claims (qcow2_poke.py stats), the read
# battery must pass on the reference and must catch a flipped byte.
#
# Measured on the development host (2 vCPU, idle, qemu-utils 7.2): image
# generation of the 30 images (create + workload + reference) ~4 s; the
# GEN_ONLY=1 run with all oracle checks ~16 s.  In the TCG test VM
# (run-vm.sh, 6.1 kernel) ~200 s with the host lightly loaded (~7 s per
# image: generation ~2 s, mapping ~1-3 s, reads ~1-2 s; the rest is process
# start-up), ~350 s when two TCG guests share the host.

. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/qcow2_common.sh"

_qcow2_init

# version cluster_size refcount_bits extended_l2 variant [cache_size]
# variant: std | prealloc (preallocation=metadata) | odd (size not a
# multiple of the cluster size)
CASES=(
	"2 512 16 off std"
	"2 512 16 off prealloc"
	"2 4k 16 off odd"
	"2 64k 16 off std"
	"2 64k 16 off prealloc"
	"2 2M 16 off odd"
	"3 512 1 off std"
	"3 512 16 off std 65536"
	"3 512 64 off odd"
	"3 4k 2 off odd"
	"3 4k 16 off std 65536"
	"3 4k 64 off prealloc"
	"3 64k 1 off std"
	"3 64k 8 off prealloc"
	"3 64k 16 off odd"
	"3 64k 64 off std"
	"3 2M 1 off std"
	"3 2M 16 off std 4194304"
	"3 2M 16 off prealloc"
	"3 2M 32 off odd"
	"3 16k 16 on std"
	"3 16k 1 on odd"
	"3 32k 4 on std"
	"3 64k 1 on std"
	"3 64k 16 on std 262144"
	"3 64k 16 on prealloc"
	"3 64k 64 on odd"
	"3 2M 16 on prealloc"
	"3 2M 64 on odd"
	"3 2M 1 on std"
)

_bytes()
{
	case "$1" in
	*k) echo $((${1%k} * 1024)) ;;
	*M) echo $((${1%M} * 1048576)) ;;
	*) echo "$1" ;;
	esac
}

PAT=$WORK/pattern
_pattern_file "$PAT" 4093 4093

# _workload C D EXT   print the qemu-io commands, one per line
_workload()
{
	local c=$1 d=$2 ext=$3 s=$(($1 / 32)) l2cov h
	[ "$ext" = on ] && l2cov=$((c * c / 16)) || l2cov=$((c * c / 8))
	h=$((c / 2 - 50 < 700 ? c / 2 - 50 : 700))
	cat <<EOF
write -q -s $PAT 0 $((3 * c + 1234))
write -q -P 0xa5 $((c - h)) $((2 * h))
write -q -s $PAT $((5 * c + 333)) $((c / 2))
write -q -P 0x5a $((7 * c)) $c
write -q -z $((7 * c + c / 4)) $((c / 2))
write -q -s $PAT $((9 * c)) $((2 * c))
write -q -z $((9 * c)) $c
write -q -z -u $((10 * c)) $c
write -q -z $((12 * c)) $c
write -q -z -u $((13 * c)) $((2 * c))
write -q -s $PAT $((16 * c)) $((4 * c))
discard -q $((17 * c)) $((2 * c))
write -q -P 0x77 $((10 * c + 100)) 300
write -q -P 0x1e $((20 * c + s)) $s
write -q -P 0x2e $((20 * c + 5 * s + 17)) $((2 * s))
write -q -s $PAT $((21 * c)) $c
write -q -z $((21 * c + 3 * s)) $((4 * s))
write -q -z -u $((22 * c + 8 * s)) $((8 * s))
write -q -P 0x3c $((23 * c + s)) $((3 * s))
write -q -z $((23 * c + 20 * s)) $((2 * s))
write -q -s $PAT $((d / 3 + 777)) $((c + 5))
write -q -s $PAT $((d / 2 + 12345)) $((3 * c))
write -q -P 0xc3 $((d - 2 * c - 4096)) 4096
write -q -s $PAT $((d - 5000)) 5000
EOF
	# ranges crossing L2-table boundaries
	[ $((l2cov + 700)) -lt "$d" ] && echo "write -q -P 0x96 $((l2cov - 700)) 1400"
	[ $((2 * l2cov + 1)) -lt "$d" ] && echo "write -q -P 0x69 $((l2cov * 2 - 1)) 2"
	return 0
}

# _gen_case N "ver cs rc ext variant" -> sets IMG CS VS DESC
_gen_case()
{
	local n=$1 ver cs rc ext var cache opts d
	read -r ver cs rc ext var cache <<<"$2"
	CS=$(_bytes "$cs")
	d=$((16 << 20))
	[ $((32 * CS)) -gt $d ] && d=$((32 * CS))
	[ "$var" = odd ] && d=$(((d + CS / 2 + 1536 + 511) / 512 * 512))
	IMG=$WORK/m$n.qcow2
	DESC="v$ver c$cs rc$rc"
	[ "$ext" = on ] && DESC="$DESC extl2"
	DESC="$DESC $var${cache:+ cache_size=$cache}"
	if [ "$ver" = 2 ]; then
		opts="compat=0.10"
	else
		opts="compat=1.1,refcount_bits=$rc,extended_l2=$ext"
	fi
	opts="$opts,cluster_size=$CS"
	[ "$var" = prealloc ] && opts="$opts,preallocation=metadata"
	rm -f "$IMG"
	_mkimg "$IMG" "$d" "$opts" || return 1
	_workload "$CS" "$d" "$ext" >"$WORK/cmds"
	_qio_file "$IMG" "$WORK/cmds" || return 1
	VS=$d
	if _gen_only; then
		VS=$(_vsize "$IMG")
		[ "$VS" = "$d" ] || { _qdiag "virtual size $VS, expected $d"; return 1; }
	fi
	CACHE=$cache EXT=$ext VER=$ver VAR=$var
	return 0
}

# Oracle validation on the host (GEN_ONLY=1)
_oracle_case()
{
	local rc=0 raw=$WORK/replay.raw
	local -a want=(normal=1)

	_qcheck "$IMG" || rc=1
	# Independent reference: the same commands on a raw file.
	rm -f "$raw"
	truncate -s "$VS" "$raw"
	QIO_FMT=raw _qio_file "$raw" "$WORK/cmds" || rc=1
	_cmp_dev_ref "$raw" "$QREF" || { _qdiag "convert reference != raw replay"; rc=1; }
	# The image must really contain what the case is meant to cover.
	if [ "$VER" = 3 ]; then
		want+=(zero_plain=1)
		[ "$VAR" = prealloc ] || want+=(zero_alloc=1)
	fi
	[ "$EXT" = on ] && want+=(mixed_cluster=2)
	[ "$EXT" = on ] && [ "$VAR" = prealloc ] && want+=(unallocated_alloc=32)
	[ "$VAR" = prealloc ] || want+=(unallocated=1)
	_expect_stats "$IMG" "${want[@]}" || rc=1
	# The read battery itself, on the raw replay standing in for the device.
	_read_battery "$raw" "$QREF" "$CS" "$N" || { _qdiag "read battery failed on the reference"; rc=1; }
	rm -f "$raw"
	return $rc
}

# Real run: map and compare
_map_case()
{
	local rc=0 name="${QCOW2_DM_PREFIX}m$N" t1
	local -a specs=("len:$((VS / 512))")
	[ -n "$CACHE" ] && specs+=("cache_size:$CACHE")
	t1=${EPOCHREALTIME//[.,]/}
	_map_image "$name" "$IMG" "${specs[@]}" || return 1
	_check_table "$name" "$MAP_TABLE_MM" || rc=1
	[ -z "$QCOW2_TIMING" ] || _qdiag "map $(_elapsed "$t1")s"
	t1=${EPOCHREALTIME//[.,]/}
	_verify_dev "$MAP_DEV" "$QREF" "$CS" "$N" || rc=1
	[ -z "$QCOW2_TIMING" ] || _qdiag "read battery + whole device $(_elapsed "$t1")s"
	# two more reads through dd, independent of qcow2_readcheck.py: an
	# unaligned one straddling clusters 9/10/11, and an O_DIRECT one at 20C
	_read_at "$MAP_DEV" $((10 * CS - 333)) $((CS + 700)) || rc=1
	_read_direct "$MAP_DEV" $((20 * CS)) $((CS > 8192 ? 8192 : 4096)) || rc=1
	_check_status "$name" "$VS" "$CS" 1 0 || rc=1
	[ "${ST_META_READS:-0}" -gt 0 ] ||
		{ _qdiag "metadata_reads is ${ST_META_READS:-missing} after reading allocated data"; rc=1; }
	_unmap "$name"
	return $rc
}

ktap_header
ktap_plan $(($(_shard_count ${#CASES[@]}) + 1))
_shard_note ${#CASES[@]}

GEN_US=0
N=0
for c in "${CASES[@]}"; do
	N=$((N + 1))
	_shard_mine "$N" || continue
	if [ -n "${QCOW2_ONLY:-}" ] && ! [[ "$N" =~ ^($QCOW2_ONLY)$ ]]; then
		ktap_skip "case $N: $c" "not in QCOW2_ONLY"
		continue
	fi
	t0=${EPOCHREALTIME//[.,]/}
	QREF=$WORK/ref.raw
	if ! _gen_case "$N" "$c" || ! _ref_raw "$IMG" "$QREF"; then
		_result "${DESC:-$c}: generation" 1
		continue
	fi
	GEN_US=$((GEN_US + ${EPOCHREALTIME//[.,]/} - t0))
	tg=$(_elapsed "$t0")
	if _gen_only; then
		_oracle_case
	else
		# (the kernel log is checked once at the end: cheaper under TCG)
		_map_case
	fi
	_result "$DESC" $?
	[ -z "$QCOW2_TIMING" ] || _qdiag "case $N: generation ${tg}s, total $(_elapsed "$t0")s"
	[ "$QCOW2_KEEP" = 1 ] || rm -f "$IMG" "$QREF"
done

if _gen_only; then
	# The oracles must be able to fail: a flipped byte has to be noticed by
	# the whole-device compare and by the read that covers it.
	r=0
	QREF=$WORK/ref.raw
	_mkimg "$WORK/neg.qcow2" 1M "cluster_size=4k" && _qio "$WORK/neg.qcow2" "write -q -s $PAT 0 1M" &&
		_ref_raw "$WORK/neg.qcow2" "$QREF" || r=1
	cp "$QREF" "$WORK/bad.raw"
	printf '\x01' | dd of="$WORK/bad.raw" bs=1 seek=5000 conv=notrunc status=none
	_cmp_dev_ref "$WORK/bad.raw" "$QREF" >/dev/null && { _qdiag "cmp missed a flipped byte"; r=1; }
	_read_at "$WORK/bad.raw" 4000 2000 >/dev/null && { _qdiag "_read_at missed a flipped byte"; r=1; }
	_read_direct "$WORK/bad.raw" 4096 4096 >/dev/null && { _qdiag "_read_direct missed a flipped byte"; r=1; }
	_read_at "$WORK/bad.raw" 0 4999 || r=1
	_verify_dev "$WORK/bad.raw" "$QREF" 4096 >/dev/null && { _qdiag "_verify_dev missed a flipped byte"; r=1; }
	_read_battery "$WORK/bad.raw" "$QREF" 4096 >/dev/null && { _qdiag "_read_battery missed byte 5000"; r=1; }
	truncate -s -512 "$WORK/bad.raw"
	_cmp_dev_ref "$WORK/bad.raw" "$QREF" >/dev/null && { _qdiag "size check missed a short device"; r=1; }
	_verify_dev "$WORK/bad.raw" "$QREF" 4096 >/dev/null && { _qdiag "_verify_dev missed a short device"; r=1; }
	cp "$QREF" "$WORK/bad.raw"
	printf '\x01' | dd of="$WORK/bad.raw" bs=1 seek=$((1048576 - 600)) conv=notrunc status=none
	_read_battery "$WORK/bad.raw" "$QREF" 4096 >/dev/null && { _qdiag "_read_battery missed the last bytes"; r=1; }
	_result "oracle negative controls" $r
else
	r=0
	_check_dmesg_clean || r=1
	_result "kernel log clean" $r
fi
_qdiag "image generation (create, workload, reference): $(_fmt_us $GEN_US)s; total $(_elapsed)s"
[ "$QCOW2_NFAIL" -eq 0 ] || _qdiag "$QCOW2_NFAIL of $N cases failed"
ktap_finish
