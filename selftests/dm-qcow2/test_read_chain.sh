#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_read_chain.sh - backing chains.
#
# Covers qcow2 over qcow2, qcow2 over raw and qcow2 over qcow2 over raw, at
# depths 1, 2 and 64 (64 layers: a raw base and 63 qcow2 layers with cluster
# sizes cycling 64k/4k/512/32k+extended L2, each writing a range of its own
# and one overlapping range, so the result depends on every layer and on
# their order).  Layers differ in cluster size, version (v2 over v3) and
# extended L2 (subcluster-granular fall-through to the backing layer).
# Overlays COW partial clusters from the backing layer, hide backing data
# with zero clusters (write -z, with and without unmap, and v3 discard).
# Backing layers shorter than the top (qcow2 with a size not a multiple of
# its cluster size; raw with a size not a multiple of 512) must read as
# zeros past their end.  An image whose backing-format extension is absent
# maps with the format the table states.  The table lists layers nearest
# first with their formats; `dmsetup table` must round-trip it and the status
# must count the layers.
# Refusals (dmesg "qcow2: ..."): the table's backing format contradicts the
# image's backing-format extension (raw for qcow2 and qcow2 for raw); the
# image has a backing file but the table gives no backing layer.
#
# GEN_ONLY=1 validates on the host: every layer's qemu-io commands are
# replayed bottom-up on one raw file, which must equal the converted
# reference; every layer passes qemu-img check; for the 64-layer chain each
# layer's own bytes must be visible in the reference.
#
# With QCOW2_SHARD=K/N (check-vm, one shard per kernel) a run maps its shard
# of the cases and the refusals whose images those cases make.
#
# Measured on the development host (2 vCPU, idle): generation of all chains
# ~2.5-3 s (the 64-layer chain ~1.2 s: 6 qemu-img creates, one python pass
# cloning layers, one qemu-io process writing all layers); GEN_ONLY=1 run
# ~5 s.  In the TCG test VM (run-vm.sh, 6.1): ~110 s with the host lightly
# loaded (generation ~55 s, the 64-layer mapping ~60 s: 64 loop devices).

. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/qcow2_common.sh"

_qcow2_init

PAT=$WORK/pattern
_pattern_file "$PAT" 4093 64

# _chain_begin TOPSIZE   start a raw replay of the whole chain
_chain_begin()
{
	SRC=$WORK/src.raw
	rm -f "$SRC"
	truncate -s "$1" "$SRC"
}

# _layer_raw FILE SIZE CMD...   raw bottom layer
_layer_raw()
{
	local file=$1 size=$2
	shift 2
	rm -f "$file"
	truncate -s "$size" "$file"
	QIO_FMT=raw _qio "$file" "$@" || return 1
	QIO_FMT=raw _qio "$SRC" "$@"
}

# _layer FILE SIZE OPTS BACKING BACKING_FMT CMD...   (BACKING may be "")
_layer()
{
	local file=$1 size=$2 lopts=$3 back=$4 bfmt=$5
	shift 5
	rm -f "$file"
	[ -n "$back" ] && lopts="$lopts${lopts:+,}backing_file=$back,backing_fmt=$bfmt"
	_mkimg "$file" "$size" "$lopts" || return 1
	[ $# -eq 0 ] && return 0
	_qio "$file" "$@" || return 1
	QIO_FMT=raw _qio "$SRC" "$@"
}

# Cases: each sets IMG (top), SPECS (backing layers, nearest first), CS,
# LAYERS (files, for qemu-img check).
_case_depth1()
{
	local b=$WORK/d1-base.qcow2
	_chain_begin 16M
	_layer "$b" 16M "" "" "" \
		"write -q -s $PAT 0 4M" "write -q -P 0x11 6M 1M" "write -q -s $PAT 10M 3M" || return 1
	IMG=$WORK/d1-top.qcow2
	_layer "$IMG" 16M "" "$b" qcow2 \
		"write -q -P 0x21 100 1000" \
		"write -q -s $PAT $((1048576 + 333)) 200k" \
		"write -q -z 6M 64k" \
		"write -q -z -u $((6291456 + 131072)) 128k" \
		"discard -q 10M 128k" \
		"write -q -P 0x22 15M 64k" || return 1
	SPECS=("qcow2:$b") CS=65536 LAYERS=("$IMG" "$b")
}

_case_depth2_raw()
{
	local b=$WORK/d2-base.raw m=$WORK/d2-mid.qcow2
	_chain_begin 16M
	_layer_raw "$b" 16M "write -q -s $PAT 0 6M" "write -q -P 0x31 8M 2M" || return 1
	_layer "$m" 16M "cluster_size=64k,extended_l2=on" "$b" raw \
		"write -q -P 0x41 2k 2k" "write -q -P 0x42 70k 10k" \
		"write -q -z 1M 16k" "write -q -s $PAT $((3145728 + 100)) 300k" \
		"write -q -z -u 8M 64k" || return 1
	IMG=$WORK/d2-top.qcow2
	_layer "$IMG" 16M "cluster_size=4k" "$m" qcow2 \
		"write -q -P 0x51 0 1000" "write -q -s $PAT $((2097152 - 2048)) 12k" \
		"write -q -z $((8388608 + 4096)) 8k" "discard -q 9M 64k" || return 1
	SPECS=("qcow2:$m" "raw:$b") CS=4096 LAYERS=("$IMG" "$m")
}

_case_depth2_mixed_cs()
{
	local b=$WORK/d2m-base.qcow2 m=$WORK/d2m-mid.qcow2
	_chain_begin 16M
	_layer "$b" 16M "compat=0.10,cluster_size=64k" "" "" "write -q -s $PAT 0 8M" || return 1
	_layer "$m" 16M "cluster_size=512" "$b" qcow2 \
		"write -q -P 0x61 $((4194304 - 300)) 600" \
		"write -q -s $PAT $((5242880 + 7)) 100000" "write -q -z 6M 4096" || return 1
	IMG=$WORK/d2m-top.qcow2
	_layer "$IMG" 16M "cluster_size=2M" "$m" qcow2 \
		"write -q -P 0x71 3M $((1048576 + 5))" "write -q -s $PAT $((7340032 - 100)) 200" || return 1
	SPECS=("qcow2:$m" "qcow2:$b") CS=2097152 LAYERS=("$IMG" "$m" "$b")
}

_case_extl2_interleave()
{
	local b=$WORK/x-base.qcow2 k
	local -a cmds=()
	_chain_begin 8M
	_layer "$b" 8M "cluster_size=64k" "" "" "write -q -s $PAT 0 8M" || return 1
	# every other 2 KiB subcluster of clusters 0..3 comes from the overlay
	for k in $(seq 0 2 127); do
		cmds+=("write -q -P $((0x80 + k)) $((k * 2048)) 2048")
	done
	cmds+=("write -q -z $((4 * 65536 + 6144)) 4096" "write -q -P 0x90 $((5 * 65536 + 1000)) 100")
	IMG=$WORK/x-top.qcow2
	_layer "$IMG" 8M "cluster_size=64k,extended_l2=on" "$b" qcow2 "${cmds[@]}" || return 1
	SPECS=("qcow2:$b") CS=65536 LAYERS=("$IMG" "$b")
}

_case_v2_over_v3()
{
	local b=$WORK/v2-base.qcow2
	_chain_begin 8M
	_layer "$b" 8M "cluster_size=4k" "" "" "write -q -s $PAT 0 8M" || return 1
	IMG=$WORK/v2-top.qcow2
	_layer "$IMG" 8M "compat=0.10" "$b" qcow2 \
		"write -q -P 0x91 $((65536 + 10)) 1000" "write -q -z 2M 64k" || return 1
	SPECS=("qcow2:$b") CS=65536 LAYERS=("$IMG" "$b")
}

_case_short_qcow2()
{
	local b=$WORK/sq-base.qcow2 bs=$((8388608 + 1536))
	_chain_begin 16M
	_layer "$b" "$bs" "" "" "" "write -q -s $PAT 0 $bs" || return 1
	IMG=$WORK/sq-top.qcow2
	_layer "$IMG" 16M "cluster_size=4k" "$b" qcow2 \
		"write -q -P 0xa1 $((8388608 - 2048)) 4096" "write -q -P 0xa2 12M 4k" || return 1
	SPECS=("qcow2:$b") CS=4096 LAYERS=("$IMG" "$b")
}

_case_short_raw()
{
	local b=$WORK/sr-base.raw
	_chain_begin 16M
	_layer_raw "$b" 5000000 "write -q -s $PAT 0 5000000" || return 1
	IMG=$WORK/sr-top.qcow2
	_layer "$IMG" 16M "" "$b" raw "write -q -P 0xb1 4999000 2000" "write -q -P 0xb2 $((5000000 + 4096)) 512" || return 1
	SPECS=("raw:$b") CS=65536 LAYERS=("$IMG")
}

_case_raw_512()
{
	local b=$WORK/r5-base.raw
	_chain_begin 8M
	_layer_raw "$b" 8M "write -q -s $PAT 0 8M" || return 1
	IMG=$WORK/r5-top.qcow2
	_layer "$IMG" 8M "cluster_size=512" "$b" raw \
		"write -q -P 0xc1 700 100" "write -q -z 4096 1024" "write -q -P 0xc2 1M 5000" || return 1
	SPECS=("raw:$b") CS=512 LAYERS=("$IMG")
}

_case_no_fmt_ext()
{
	local b=$WORK/nf-base.qcow2
	_chain_begin 8M
	_layer "$b" 8M "" "" "" "write -q -s $PAT 0 2M" || return 1
	IMG=$WORK/nf-top.qcow2
	_layer "$IMG" 8M "" "$b" qcow2 "write -q -P 0xd1 1M 100k" || return 1
	# hide the backing format extension (becomes an unknown extension)
	_poke ext-set-type "$IMG" 0xe2792aca 0x7e57e575 || return 1
	SPECS=("qcow2:$b") CS=65536 LAYERS=("$IMG" "$b")
}

# 64 layers: L00 raw, L01..L63 qcow2; L63 is the top.
CHAIN_SIZE=$((8 << 20))
_case_depth64()
{
	local i tmpl cs
	local -a cmds=() specs=()
	_chain_begin $CHAIN_SIZE
	_layer_raw "$WORK/L00.img" $CHAIN_SIZE "write -q -s $PAT 0 $CHAIN_SIZE" || return 1
	_mkimg "$WORK/L01.img" $CHAIN_SIZE "cluster_size=64k,backing_file=$WORK/L00.img,backing_fmt=raw" || return 1
	# templates with the same backing-name length as every layer
	for tmpl in 0 1 2 3; do
		case $tmpl in
		0) cs="cluster_size=64k" ;;
		1) cs="cluster_size=4k" ;;
		2) cs="cluster_size=512" ;;
		3) cs="cluster_size=32k,extended_l2=on" ;;
		esac
		qemu-img create -q -f qcow2 -u -o "$cs,backing_file=$WORK/LXX.img,backing_fmt=qcow2" \
			"$WORK/T$tmpl.img" $CHAIN_SIZE || return 1
	done
	python3 - "$WORK" <<'EOF' || return 1
import struct, sys
d = sys.argv[1]
for i in range(2, 64):
    t = open("%s/T%d.img" % (d, i % 4), "rb").read()
    off, size = struct.unpack(">QI", t[8:20])
    old = ("%s/LXX.img" % d).encode()
    new = ("%s/L%02d.img" % (d, i - 1)).encode()
    assert t[off:off + size] == old and len(new) == len(old)
    open("%s/L%02d.img" % (d, i), "wb").write(t[:off] + new + t[off + size:])
EOF
	for i in $(seq 1 63); do
		cmds+=(-c "open -o driver=qcow2 $WORK/$(printf L%02d.img "$i")"
			-c "write -q -P $i $((i * 131072 + i * 7)) 3000"
			-c "write -q -P $((i + 100)) $((CHAIN_SIZE - 65536 + i * 512)) 1024"
			-c "close")
	done
	qemu-io "${cmds[@]}" >"$WORK/q.out" 2>&1 && ! grep -Eqi 'fail|error' "$WORK/q.out" ||
		{ _qdiag "layer writes failed: $(head -3 "$WORK/q.out")"; return 1; }
	# the same writes, bottom-up, on the raw replay
	cmds=()
	for i in $(seq 1 63); do
		cmds+=("write -q -P $i $((i * 131072 + i * 7)) 3000"
			"write -q -P $((i + 100)) $((CHAIN_SIZE - 65536 + i * 512)) 1024")
	done
	QIO_FMT=raw _qio "$SRC" "${cmds[@]}" || return 1
	for i in $(seq 62 -1 1); do
		specs+=("qcow2:$WORK/$(printf L%02d.img "$i")")
	done
	specs+=("raw:$WORK/L00.img")
	IMG=$WORK/L63.img SPECS=("${specs[@]}") CS=32768 LAYERS=("$IMG" "$WORK/L01.img" "$WORK/L02.img")
}

# every layer's bytes must show in the reference
_oracle_depth64()
{
	local i rc=0 v
	for i in $(seq 1 63); do
		v=$(od -An -tu1 -j $((i * 131072 + i * 7 + 1500)) -N 1 "$QREF" | tr -d ' ')
		[ "$v" = "$i" ] || { _qdiag "layer $i: byte $v in its own range"; rc=1; }
		v=$(od -An -tu1 -j $((CHAIN_SIZE - 65536 + i * 512 + 100)) -N 1 "$QREF" | tr -d ' ')
		[ "$v" = $((i + 100)) ] || { _qdiag "layer $i: byte $v in the shared range"; rc=1; }
	done
	return $rc
}

CASES=(
	"depth 1: qcow2 over qcow2:_case_depth1"
	"depth 2: qcow2 4k over qcow2 64k extl2 over raw:_case_depth2_raw"
	"depth 2: qcow2 2M over qcow2 512 over qcow2 v2 64k:_case_depth2_mixed_cs"
	"extl2 overlay, subclusters interleaved with backing:_case_extl2_interleave"
	"v2 overlay over v3:_case_v2_over_v3"
	"qcow2 backing shorter than top (unaligned size):_case_short_qcow2"
	"raw backing shorter than top (size % 512 != 0):_case_short_raw"
	"512-byte clusters over raw:_case_raw_512"
	"no backing format extension:_case_no_fmt_ext"
	"depth 64: 63 qcow2 layers over raw:_case_depth64"
)
# Refusals: "description;image;pattern;backing layers (fmt file ...);case
# that makes the image" (run where that case's shard runs)
NEG=(
	"backing format raw, header says qcow2;d1-top.qcow2;backing|format;raw d1-base.qcow2;_case_depth1"
	"backing format qcow2, header says raw;r5-top.qcow2;backing|format;qcow2 r5-base.raw;_case_raw_512"
	"image has a backing file, table has none;d1-top.qcow2;backing;;_case_depth1"
	"two-level chain given one layer;d2-top.qcow2;backing;qcow2 d2-mid.qcow2;_case_depth2_raw"
)

_oracle_case()
{
	local rc=0 l
	for l in "${LAYERS[@]}"; do
		_qcheck "$l" || rc=1
	done
	_cmp_dev_ref "$SRC" "$QREF" || { _qdiag "reference != replay of all layers"; rc=1; }
	[ "$FN" = _case_depth64 ] && { _oracle_depth64 || rc=1; }
	_read_battery "$SRC" "$QREF" "$CS" 5 || rc=1
	return $rc
}

_map_case()
{
	local rc=0 name="${QCOW2_DM_PREFIX}ch$N"
	_map_image "$name" "$IMG" "${SPECS[@]}" || return 1
	_check_table "$name" "$MAP_TABLE_MM" || rc=1
	_verify_dev "$MAP_DEV" "$QREF" "$CS" "$N" || rc=1
	_check_status "$name" "$MAP_VSIZE" "$CS" "$MAP_LAYERS" 0 || rc=1
	_unmap "$name"
	return $rc
}

# _neg_case "desc;image;pattern;fmt file ..."
_neg_case()
{
	local img pat layers gen dev name="${QCOW2_DM_PREFIX}neg$N" len bdev
	local -a opts=() l=()
	IFS=';' read -r _ img pat layers gen <<<"$1"
	img=$WORK/$img
	[ -f "$img" ] || { _qdiag "$img missing: $gen did not run"; return 1; }
	if _gen_only; then
		qemu-img info -U "$img" | grep -q '^backing file:' ||
			{ _qdiag "$img has no backing file"; return 1; }
		return 0
	fi
	dev=$(_img_attach "$img") || return 1
	read -ra l <<<"$layers"
	set -- "${l[@]}"
	while [ $# -ge 2 ]; do
		bdev=$(_img_attach "$WORK/$2") || return 1
		opts+=(backing "$1" "$bdev")
		shift 2
	done
	len=$(($(_vsize "$img") / 512))
	_expect_refused "$name" "$(_qcow2_table "$dev" "$len" "${opts[@]}")" "$pat"
}

# The refusals this shard runs: those whose image a case of it makes.
MYNEG=()
for c in "${NEG[@]}"; do
	n=$(_pos_of "${c##*;}" "${CASES[@]##*:}") || { echo "no case ${c##*;}" >&2; exit 1; }
	_shard_mine "$n" && MYNEG+=("$c")
done

ktap_header
ktap_plan $(($(_shard_count ${#CASES[@]}) + 1 + ${#MYNEG[@]}))
_shard_note ${#CASES[@]}

GEN_US=0
N=0
for c in "${CASES[@]}"; do
	N=$((N + 1))
	_shard_mine "$N" || continue
	DESC=${c%:*} FN=${c##*:}
	t0=${EPOCHREALTIME//[.,]/}
	QREF=$WORK/ref.raw
	if ! $FN || ! _ref_raw "$IMG" "$QREF"; then
		_result "$DESC: generation" 1
		continue
	fi
	GEN_US=$((GEN_US + ${EPOCHREALTIME//[.,]/} - t0))
	tg=$(_elapsed "$t0")
	if _gen_only; then
		_oracle_case
	else
		_map_case
	fi
	_result "$DESC" $?
	[ -z "$QCOW2_TIMING" ] || _qdiag "case $N: generation ${tg}s, total $(_elapsed "$t0")s"
	rm -f "$QREF" "$SRC"
done
_dmesg_clean_result "kernel log clean after the chains"
for c in "${MYNEG[@]}"; do
	N=$((N + 1))
	_neg_case "$c"
	_result "refused: ${c%%;*}" $?
done
_qdiag "image generation: $(_fmt_us $GEN_US)s; total $(_elapsed)s"
ktap_finish
