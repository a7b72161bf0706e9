#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_read_open.sh - opening is cheap; metadata is read on demand.
#
# A sparse 1 TiB image (64 KiB clusters, 2048 L1 entries) with 256
# scattered 64 KiB writes, each in its own 512 MiB L1 range and so with its
# own L2 table (one qemu-io process, 256 -c commands), and an empty 1 TiB
# image.  Both must map with open_reads (status field 9) <= 4 (header and
# L1: nothing proportional to the allocated data) and the same count for
# both.  Reading a few scattered clusters must raise metadata_reads (field
# 8) and return the written patterns; an unallocated range far away reads as
# zeros.  Then the populated image is mapped again with a small cache_size
# (128 KiB: far fewer than 256 L2 tables) and all 256 clusters are read back
# with O_DIRECT and compared, exercising eviction; the cache stays within its
# bound and io_errors stays 0.  Last, empty images of several geometries
# (extended L2, 64-bit refcounts, 512-byte and 4 KiB clusters, 16 GiB to
# 1 TiB, over a qcow2 or a raw backing file) are mapped without cache_size:
# the bound in slots must be the pages for all L2 slices of the chain plus
# the image's refcount slices, clamped to 8-32 MiB, and the table must not
# show it; a cache_size of 8 MiB given in the table must be shown.
#
# GEN_ONLY=1 validates on the host that qemu-io reads every pattern back
# from the image (one process, 256 read -P commands) and that the expected
# data file matches those patterns.
#
# Measured on the development host (2 vCPU, idle): generation ~1.2 s (the
# populated image is ~33 MB, the empty one 0.3 MB); GEN_ONLY=1 run ~2.5 s.
# In the TCG test VM: ~60 s.

. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/qcow2_common.sh"

_qcow2_init

C=65536
NW=256
SIZE=$((1 << 40))
BIG=$WORK/big.qcow2
EMPTY=$WORK/empty.qcow2

# offset of write i: L1 range 8*i (+ i%7), cluster (i*37)%8192 inside it
_off()
{
	local i=$1
	echo $(( ((8 * i + i % 7) << 29) + ((i * 37 % 8192) << 16) ))
}
_pat()
{
	echo $(( ($1 * 53) % 255 + 1 ))
}

t0=${EPOCHREALTIME//[.,]/}
_mkimg "$BIG" 1T && _mkimg "$EMPTY" 1T || { echo "# qemu-img create failed"; exit 1; }
cmds=() rcmds=()
for i in $(seq 0 $((NW - 1))); do
	cmds+=("write -q -P $(_pat "$i") $(_off "$i") $C")
	rcmds+=("read -q -P $(_pat "$i") $(_off "$i") $C")
done
_qio "$BIG" "${cmds[@]}" || { echo "# qemu-io writes failed"; exit 1; }
# expected data of the 256 clusters, concatenated in write order
python3 - "$WORK/expected" "$NW" "$C" <<'EOF'
import sys
out, nw, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(out, "wb") as f:
    for i in range(nw):
        f.write(bytes([(i * 53) % 255 + 1]) * c)
EOF
T_GEN=$(_elapsed "$t0")

if _gen_only; then
	ktap_header
	ktap_plan 2
	r=0
	qargs=()
	for c in "${rcmds[@]}"; do
		qargs+=(-c "$c")
	done
	QIO_OUT=$(qemu-io -r -f qcow2 "${qargs[@]}" "$BIG" 2>&1) || r=1
	echo "$QIO_OUT" | grep -qi 'fail' && { _qdiag "$(echo "$QIO_OUT" | head -3)"; r=1; }
	[ "$(_vsize "$BIG")" = "$SIZE" ] || r=1
	[ "$(_stats_get "$BIG" normal)" = "$NW" ] || { _qdiag "expected $NW data clusters"; r=1; }
	_result "qemu-io reads back all $NW patterns" $r
	r=0
	for i in 0 17 255; do
		v=$(od -An -tu1 -j $((i * C + 1234)) -N 1 "$WORK/expected" | tr -d ' ')
		[ "$v" = "$(_pat "$i")" ] || r=1
	done
	_result "expected data file" $r
	_qdiag "generation ${T_GEN}s; image $(du -k "$BIG" | cut -f1) KiB"
	ktap_finish
fi

# _read_cluster DEV I   O_DIRECT read of written cluster I vs. expected
_read_cluster()
{
	local dev=$1 i=$2
	dd if="$WORK/expected" of="$WORK/exp1" bs=$C skip="$i" count=1 status=none
	dd if="$dev" of="$WORK/got1" bs=$C iflag=direct skip=$(($(_off "$i") / C)) count=1 status=none ||
		{ _qdiag "read of cluster $i failed"; return 1; }
	cmp -s "$WORK/got1" "$WORK/exp1" ||
		{ _qdiag "cluster $i at $(_off "$i"): $(cmp "$WORK/got1" "$WORK/exp1" 2>&1 | head -1)"; return 1; }
}

ktap_header
ktap_plan 5

# --- 1. open cost, populated vs empty
_qmark
r=0
if _map_image "${QCOW2_DM_PREFIX}big" "$BIG" && DEV_BIG=$MAP_DEV &&
	_map_image "${QCOW2_DM_PREFIX}empty" "$EMPTY"; then
	ob=$(_status_field "${QCOW2_DM_PREFIX}big" 9)
	oe=$(_status_field "${QCOW2_DM_PREFIX}empty" 9)
	_qdiag "open_reads: populated $ob, empty $oe"
	[ "${ob:-99}" -le 4 ] || { _qdiag "populated image: open_reads $ob > 4"; r=1; }
	[ "${oe:-99}" -le 4 ] || { _qdiag "empty image: open_reads $oe > 4"; r=1; }
	[ "$ob" = "$oe" ] || { _qdiag "open cost depends on allocated data"; r=1; }
	_check_status "${QCOW2_DM_PREFIX}big" "$SIZE" "$C" 1 0 || r=1
else
	r=1
fi
_check_dmesg_clean >/dev/null || r=1
_result "1 TiB image maps with open_reads <= 4, independent of allocation" $r

# --- 2. scattered reads raise metadata_reads
r=0
if [ -n "$DEV_BIG" ]; then
	m0=$(_status_field "${QCOW2_DM_PREFIX}big" 8)
	for i in 3 77 150 254; do
		_read_cluster "$DEV_BIG" "$i" || r=1
	done
	m1=$(_status_field "${QCOW2_DM_PREFIX}big" 8)
	_qdiag "metadata_reads: $m0 before, $m1 after 4 scattered reads"
	[ "${m1:-0}" -gt "${m0:-0}" ] || { _qdiag "metadata_reads did not grow"; r=1; }
	[ $((m1 - m0)) -ge 4 ] || { _qdiag "4 reads under 4 different L2 tables need >= 4 metadata reads"; r=1; }
else
	r=1
fi
_result "scattered reads are correct and read metadata on demand" $r

# --- 3. unallocated ranges far away read as zeros
r=0
if [ -n "$DEV_BIG" ]; then
	# (/dev/zero as the reference: cmp skips to the same offset in it)
	for off in $((SIZE - C)) $(( (1000 << 29) + 12 * C )) $(( (8 << 29) + 5 * C )); do
		_read_direct "$DEV_BIG" "$off" $C /dev/zero || r=1
	done
	_read_at "$DEV_BIG" $((SIZE - 1000)) 1000 /dev/zero || r=1
else
	r=1
fi
_result "unallocated ranges read as zeros" $r
_unmap "${QCOW2_DM_PREFIX}big"
_unmap "${QCOW2_DM_PREFIX}empty"

# --- 4. small cache: all 256 clusters
r=0
_qmark
if _map_image "${QCOW2_DM_PREFIX}small" "$BIG" cache_size:131072; then
	: >"$WORK/got"
	for i in $(seq 0 $((NW - 1))); do
		dd if="$MAP_DEV" bs=$C iflag=direct skip=$(($(_off "$i") / C)) count=1 status=none \
			>>"$WORK/got" || { r=1; break; }
	done
	cmp "$WORK/got" "$WORK/expected" >/dev/null 2>&1 ||
		{ _qdiag "cluster data differs: $(cmp "$WORK/got" "$WORK/expected" 2>&1 | head -1)"; r=1; }
	_check_status "${QCOW2_DM_PREFIX}small" "$SIZE" "$C" 1 0 || r=1
	_qdiag "status: $(_status_fields "${QCOW2_DM_PREFIX}small")"
	_unmap "${QCOW2_DM_PREFIX}small"
else
	r=1
fi
_check_dmesg_clean >/dev/null || r=1
_result "cache_size 128 KiB: all $NW clusters under $NW L2 tables read back" $r

# --- 5. the default cache bound follows the chain's metadata
# _want_slots PAGE VSIZE CLUSTER ENTRY_BYTES REFCOUNT_BITS [VSIZE CLUSTER ENTRY_BYTES]...
# pages for every L2 slice of each qcow2 layer (a slice is min(cluster,
# page)) and the top layer's refcount slices, clamped to 8-32 MiB.
_want_slots()
{
	local page=$1 vs=$2 c=$3 e=$4 rb=$5 slice n pages
	slice=$((c < page ? c : page)) n=$(((vs + c - 1) / c))
	pages=$(((n * e + slice - 1) / slice + (n * rb / 8 + slice - 1) / slice))
	shift 5
	while [ $# -ge 3 ]; do
		slice=$(($2 < page ? $2 : page)) n=$((($1 + $2 - 1) / $2))
		pages=$((pages + (n * $3 + slice - 1) / slice))
		shift 3
	done
	[ $pages -ge $((8 * M / page)) ] || pages=$((8 * M / page))
	[ $pages -le $((32 * M / page)) ] || pages=$((32 * M / page))
	echo $pages
}
M=$((1 << 20)) G=$((1 << 30))
PAGE=$(getconf PAGESIZE)
r=0
_qmark
# name|size|qemu-img -o|want (page vs cluster entry refcount_bits [backing...])|map specs
cases=(
	"small|16G||$PAGE $((16 * G)) 65536 8 16|"
	"extl2|64G|extended_l2=on|$PAGE $((64 * G)) 65536 16 16|"
	"rc64|64G|refcount_bits=64|$PAGE $((64 * G)) 65536 8 64|"
	"c512|64M|cluster_size=512|$PAGE $((64 * M)) 512 8 16|"
	"c4k|8G|cluster_size=4096|$PAGE $((8 * G)) 4096 8 16|"
	"huge|1T||$PAGE $SIZE 65536 8 16|"
	"chain|64G|backing_file=$WORK/b-base.qcow2,backing_fmt=qcow2|$PAGE $((64 * G)) 65536 8 16 $((64 * G)) 65536 8|qcow2:$WORK/b-base.qcow2"
	"onraw|64G|backing_file=$WORK/b-base.raw,backing_fmt=raw|$PAGE $((64 * G)) 65536 8 16|raw:$WORK/b-base.raw"
)
if _mkimg "$WORK/b-base.qcow2" 64G && truncate -s 64G "$WORK/b-base.raw"; then
	for cs in "${cases[@]}"; do
		IFS='|' read -r name size o want spec <<<"$cs"
		img=$WORK/b-$name.qcow2
		_mkimg "$img" "$size" "$o" || { r=1; continue; }
		# shellcheck disable=SC2086	# word lists on purpose
		w=$(_want_slots $want)
		# shellcheck disable=SC2086
		if _map_image "${QCOW2_DM_PREFIX}b" "$img" $spec; then
			got=$(_status_field "${QCOW2_DM_PREFIX}b" 5)
			got=${got#*/}
			t=$(dmsetup table "${QCOW2_DM_PREFIX}b")
			_qdiag "$name ($size${o:+ ${o%%=*}...}${spec:+ over ${spec%%:*}}): $got slots, want $w"
			[ "$got" = "$w" ] || { _qdiag "$name: bound $got slots, want $w"; r=1; }
			[[ $t != *cache_size* ]] ||
				{ _qdiag "$name: default bound shown in the table: $t"; r=1; }
			_unmap "${QCOW2_DM_PREFIX}b"
		else
			r=1
		fi
	done
	# a bound from the table is kept, and shown, even if it equals 8 MiB
	if _map_image "${QCOW2_DM_PREFIX}b" "$WORK/b-extl2.qcow2" cache_size:$((8 * M)); then
		got=$(_status_field "${QCOW2_DM_PREFIX}b" 5)
		[ "${got#*/}" = $((8 * M / PAGE)) ] || { _qdiag "cache_size 8 MiB: $got"; r=1; }
		t=$(dmsetup table "${QCOW2_DM_PREFIX}b")
		[[ $t == *" 2 cache_size $((8 * M))" ]] || { _qdiag "table: $t"; r=1; }
		_unmap "${QCOW2_DM_PREFIX}b"
	else
		r=1
	fi
else
	r=1
fi
_check_dmesg_clean >/dev/null || r=1
_result "default cache bound: every L2 slice of the chain and the refcounts, 8-32 MiB" $r
_qdiag "generation ${T_GEN}s; total $(_elapsed)s"
ktap_finish
