#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_read_corrupt.sh - damaged images: refused at load, or failing only
# the affected reads.
#
# A corpus of images made by qemu-img/qemu-io and damaged by byte pokes at
# documented offsets (header fields with _put_be, L1/L2 entries with
# qcow2_poke.py).  Three groups:
#  1. REFUSE: one image per header validation rule.  `dmsetup create` must
#     fail and dm core's table error line since a mark ("device-mapper:
#     table: <dev>: qcow2: <reason> (-Exxx)") must give a reason matching
#     the case's pattern (extended regex, case-insensitive), with no
#     oops/WARN.  Only that line counts: the target's detail lines repeat
#     header fields ("refcount_order 4", ...) that loose patterns would
#     match for any refusal.
#  2. ACCEPT: images that must map read-only and read exactly like
#     `qemu-img convert -O raw`: dirty bit (a real lazy-refcounts image left
#     dirty by qemu-io abort), corrupt bit, unknown compatible and autoclear
#     bits, an unknown header extension, a persistent-bitmaps extension and a
#     v3 header_length of 104 (no compression_type field).
#  3. RUNTIME: metadata damage that a lazy reader only meets when reading:
#     the table loads, a read of the affected range fails with EIO (dd exits
#     non-zero), the kernel log has a "qcow2" line, the status io_errors
#     count is non-zero, every other range still reads exactly like the
#     undamaged image's reference, and no oops/WARN.
#
# GEN_ONLY=1 validates the corpus on the host: for REFUSE cases QEMU must
# refuse to open the image for reading too (`qemu-io -r -c "read 0 512"`
# fails), except cases marked "open" where QEMU is more lenient than the
# target; ACCEPT cases must open in QEMU with unchanged content; RUNTIME
# cases marked "eio" must make `qemu-io -r -c "read ..."` fail on the
# damaged range ("lenient": QEMU reads it), every one must succeed elsewhere.
#
# QEMU 7.2 notes found on the way: `qemu-img info` segfaults (exit 139) on
# the crypt_method 2 image without a FDE header extension (qemu-io reports
# "Missing CRYPTO header for crypt method 2"); `qemu-img info` opens an image
# with incompatible bit 2 and no data file (only I/O opens refuse it).
#
# Measured on the development host (2 vCPU, idle): building the base images
# ~0.7 s, the whole corpus ~2 s; GEN_ONLY=1 run ~5-6 s.  In the TCG test VM:
# ~180 s (52 cases, most of it process start-up).

. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/qcow2_common.sh"

_qcow2_init xxd

TIB=$((1 << 40))

# --------------------------------------------------------------------------
# REFUSE cases: "name :: base :: backing :: qemu :: pattern :: action on $F"
#   base:    image the damage is applied to (see _make_bases)
#   backing: file given as "backing qcow2" layer in the table, or -
#   qemu:    refuse = QEMU 7.2 also refuses to open it; open = QEMU opens it
REFUSE=(
	"bad magic :: b3 :: - :: refuse :: magic :: _put_be \$F 0 4 0x514649fa"
	"version 1 :: b3 :: - :: refuse :: version :: _put_be \$F 4 4 1"
	"version 4 :: b3 :: - :: refuse :: version :: _put_be \$F 4 4 4"
	"cluster_bits 8 :: b3 :: - :: refuse :: cluster_bits|cluster.size :: _put_be \$F 20 4 8"
	"cluster_bits 22 :: b3 :: - :: refuse :: cluster_bits|cluster.size :: _put_be \$F 20 4 22"
	"v3 header_length 100 :: b3 :: - :: refuse :: header_length|header.length :: _put_be \$F 100 4 100"
	"header_length > cluster :: b3 :: - :: refuse :: header_length|header.length :: _put_be \$F 100 4 65544"
	"backing_file_offset > cluster :: ov :: ovbase :: refuse :: backing :: _put_be \$F 8 8 0x20000"
	"backing name > 1023 bytes :: ov :: ovbase :: refuse :: backing :: _put_be \$F 16 4 1024"
	"backing name past cluster :: ov512 :: ovbase :: refuse :: backing :: _put_be \$F 16 4 400"
	"backing format ext len 16 :: ov :: ovbase :: refuse :: backing|format|extension :: _poke ext-set-len \$F 0xe2792aca 16"
	"crypt_method 1 (real AES) :: aes :: - :: refuse :: encrypt|crypt :: :"
	"crypt_method 2 (LUKS) :: b3 :: - :: refuse :: encrypt|crypt|luks :: _put_be \$F 32 4 2"
	"crypt_method 3 :: b3 :: - :: refuse :: encrypt|crypt :: _put_be \$F 32 4 3"
	"unknown incompatible bit 5 :: b3 :: - :: refuse :: incompatible|feature :: _put_be \$F 72 8 0x20"
	"compression bit, type 0 :: b3 :: - :: refuse :: compression :: _put_be \$F 72 8 0x8"
	"compression type 2 :: b3 :: - :: refuse :: compression :: _put_be \$F 72 8 0x8; _put_be \$F 104 1 2"
	"compression type 1 without bit :: b3 :: - :: refuse :: compression :: _put_be \$F 104 1 1"
	"extended L2, 4k clusters :: b3_4k :: - :: refuse :: extended|subcluster :: _put_be \$F 72 8 0x10"
	"refcount_order 7 :: b3 :: - :: refuse :: refcount_order|refcount.order :: _put_be \$F 96 4 7"
	"refcount_table_clusters 0 :: b3 :: - :: refuse :: refcount.table|refcount_table :: _put_be \$F 56 4 0"
	"refcount table > 8 MiB :: b3 :: - :: refuse :: refcount.table|refcount_table :: _put_be \$F 56 4 0x10000"
	"refcount table misaligned :: b3 :: - :: refuse :: refcount.table|refcount_table :: _put_be \$F 48 8 0x10200"
	"refcount table beyond device :: b3 :: - :: open :: refcount.table|refcount_table :: _put_be \$F 48 8 $TIB"
	"L1 offset misaligned :: b3 :: - :: refuse :: L1 :: _put_be \$F 40 8 0x30200"
	"L1 offset beyond device :: b3 :: - :: open :: L1 :: _put_be \$F 40 8 $TIB"
	"L1 too small for size :: b3_4k :: - :: refuse :: L1 :: _put_be \$F 36 4 7"
	"l1_size over 32 MiB :: b3 :: - :: refuse :: L1 :: _put_be \$F 36 4 0x400001"
	"snapshot table misaligned :: snap :: - :: refuse :: snapshot :: _put_be \$F 64 8 \$((\$(_get_be \$F 64 8) + 512))"
	"snapshot table beyond device :: snap :: - :: open :: snapshot :: _put_be \$F 64 8 $TIB"
	"nb_snapshots > 65536 :: snap :: - :: refuse :: snapshot :: _put_be \$F 60 4 65537"
	"external data file (real) :: datafile :: - :: open :: data.file|data_file|external :: :"
	"data file bit, no name :: b3 :: - :: refuse :: data.file|data_file|external :: _put_be \$F 72 8 0x4"
	"extension past cluster :: b3 :: - :: refuse :: extension :: _poke ext-set-len \$F 0x6803f857 0x10000"
	"v2 extension past cluster :: b2 :: - :: refuse :: extension :: _poke ext-add \$F 0x12345678 aabbccdd; _poke ext-set-len \$F 0x12345678 70000"
)

# ACCEPT cases: "name :: base :: action"  (must map and read correctly)
ACCEPT=(
	"dirty bit (lazy refcounts, qemu-io abort) :: lazy :: :"
	"corrupt bit :: b3 :: _put_be \$F 72 8 0x2"
	"unknown compatible bit 7 :: b3 :: _put_be \$F 80 8 0x80"
	"unknown autoclear bit 9 :: b3 :: _put_be \$F 88 8 0x200"
	"unknown header extension :: b2 :: _poke ext-add \$F 0x7e57e575 0102030405"
	"persistent bitmap extension :: bitmap :: :"
	"v3 header_length 104 :: b3 :: _put_be \$F 100 4 104"
)

# RUNTIME cases: "name :: base :: guest offset :: bad length :: qemu :: action"
#   (action may use \$GOFF; the bad range is [GOFF, GOFF + LEN))
#   qemu: eio = QEMU 7.2 fails that read too; lenient = QEMU reads it (as
#   zeros past EOF; it ignores reserved L2 bits on reads): the target is
#   stricter by design.
RUNTIME=(
	"L2 entry beyond device :: b3 :: 65536 :: 65536 :: lenient :: _poke l2-mod \$F \$GOFF '(1 << 63) | (1 << 40)'"
	"L2 entry reserved bit 1 :: b3 :: 131072 :: 65536 :: lenient :: _poke l2-mod \$F \$GOFF 'e | 2'"
	"L2 entry misaligned offset :: b3 :: 196608 :: 65536 :: eio :: _poke l2-mod \$F \$GOFF 'e + 512'"
	"L1 entry beyond device :: b3_4k :: 2097152 :: 2097152 :: lenient :: _poke l1-mod \$F 1 '(1 << 63) | (1 << 40)'"
	"L1 entry misaligned :: b3_4k :: 2097152 :: 2097152 :: eio :: _poke l1-mod \$F 1 'e + 512'"
	"compressed beyond device :: comp :: 65536 :: 65536 :: eio :: _poke l2-mod \$F \$GOFF '(e & ~((1 << 54) - 1)) | (1 << 40)'"
	"deflate stream garbage :: comp :: 131072 :: 65536 :: eio :: _poke garble-compressed \$F \$GOFF 512"
	"zstd stream garbage :: zstd :: 131072 :: 65536 :: eio :: _poke garble-compressed \$F \$GOFF 512"
	"zero flag in a v2 image :: b2 :: 65536 :: 65536 :: eio :: _poke l2-mod \$F \$GOFF 'e | 1'"
	"extended L2 alloc+zero bits :: ext :: 0 :: 65536 :: eio :: _poke l2-mod \$F \$GOFF e 'bm | (1 << 32) if bm & 1 else None'"
)

PAT=$WORK/pattern
_pattern_file "$PAT" 4093 66

_make_bases()
{
	local cmds=("write -q -s $PAT 0 256k" "write -q -P 0x42 1M 100k" "write -q -s $PAT 8M 1M"
		"write -q -P 0x43 $((16777216 - 4096)) 4096")
	_mkimg "$WORK/b3.qcow2" 16M && _qio "$WORK/b3.qcow2" "${cmds[@]}" || return 1
	_mkimg "$WORK/b2.qcow2" 16M compat=0.10 && _qio "$WORK/b2.qcow2" "${cmds[@]}" || return 1
	_mkimg "$WORK/b3_4k.qcow2" 16M cluster_size=4k &&
		_qio "$WORK/b3_4k.qcow2" "${cmds[@]}" "write -q -P 0x44 3M 8k" || return 1
	_mkimg "$WORK/ext.qcow2" 16M extended_l2=on &&
		_qio "$WORK/ext.qcow2" "write -q -s $PAT 0 8k" "write -q -s $PAT 64k 64k" \
			"write -q -P 0x45 200k 2k" || return 1
	cp "$WORK/b3.qcow2" "$WORK/snap.qcow2" && qemu-img snapshot -c s1 "$WORK/snap.qcow2" &&
		_qio "$WORK/snap.qcow2" "write -q -P 0x46 0 64k" || return 1
	_mkimg "$WORK/ovbase.qcow2" 16M && _qio "$WORK/ovbase.qcow2" "write -q -s $PAT 0 4M" || return 1
	_mkimg "$WORK/ov.qcow2" 16M "backing_file=$WORK/ovbase.qcow2,backing_fmt=qcow2" &&
		_qio "$WORK/ov.qcow2" "write -q -P 0x47 100k 100k" || return 1
	_mkimg "$WORK/ov512.qcow2" 16M "cluster_size=512,backing_file=$WORK/ovbase.qcow2,backing_fmt=qcow2" &&
		_qio "$WORK/ov512.qcow2" "write -q -P 0x48 100k 100k" || return 1
	qemu-img create -q --object secret,id=s0,data=pw -f qcow2 \
		-o encrypt.format=aes,encrypt.key-secret=s0 "$WORK/aes.qcow2" 16M || return 1
	_mkimg "$WORK/datafile.qcow2" 16M "data_file=$WORK/datafile.data" &&
		_qio "$WORK/datafile.qcow2" "write -q -P 0x49 0 64k" || return 1
	_mkimg "$WORK/lazy.qcow2" 16M lazy_refcounts=on || return 1
	# qemu-io dies with SIGABRT on purpose: the image stays dirty
	(qemu-io -f qcow2 -c "write -q -s $PAT 0 300k" -c "write -q -P 0x4a 5M 64k" -c abort \
		"$WORK/lazy.qcow2" >/dev/null 2>&1; true) 2>/dev/null
	[ $(( $(_get_be "$WORK/lazy.qcow2" 72 8) & 1 )) = 1 ] ||
		{ _qdiag "lazy.qcow2 is not dirty"; return 1; }
	cp "$WORK/b3.qcow2" "$WORK/bitmap.qcow2" &&
		qemu-img bitmap --add --granularity 64k "$WORK/bitmap.qcow2" bm0 &&
		_qio "$WORK/bitmap.qcow2" "write -q -P 0x4b 2M 64k" || return 1
	truncate -s 16M "$WORK/comp.raw" && QIO_FMT=raw _qio "$WORK/comp.raw" "${cmds[@]}" &&
		qemu-img convert -c -O qcow2 "$WORK/comp.raw" "$WORK/comp.qcow2" &&
		qemu-img convert -c -O qcow2 -o compression_type=zstd "$WORK/comp.raw" "$WORK/zstd.qcow2" || return 1
	rm -f "$WORK/comp.raw"
	if _gen_only; then
		local b
		for b in b3 b2 b3_4k ext snap ov ov512 aes datafile lazy bitmap comp zstd; do
			[ "$(_vsize "$WORK/$b.qcow2")" = $((LEN * 512)) ] ||
				{ _qdiag "$b.qcow2 is not $((LEN * 512)) bytes"; return 1; }
		done
		_expect_stats "$WORK/comp.qcow2" compressed=4 || return 1
		_expect_stats "$WORK/zstd.qcow2" compressed=4 || return 1
	fi
}

# _split "a :: b :: c" -> FIELDS=(a b c)
_split()
{
	local rest=$1
	FIELDS=()
	while [[ "$rest" == *" :: "* ]]; do
		FIELDS+=("${rest%% :: *}")
		rest=${rest#* :: }
	done
	FIELDS+=("$rest")
}

# _damage BASE NAME ACTION   copy BASE to a new file and apply ACTION; sets F
_damage()
{
	F=$WORK/case$N.qcow2
	cp "$WORK/$1.qcow2" "$F" || return 1
	eval "$2" || { _qdiag "damage failed: $2"; return 1; }
}

# Every base image is 16 MiB: the table length of all cases (computed from
# the undamaged images, so that only the damaged field can be objected to).
LEN=$((16 << 20 >> 9))

t0=${EPOCHREALTIME//[.,]/}
if ! _make_bases; then
	echo "# building the base images failed"
	exit 1
fi
T_BASE=$(_elapsed "$t0")

ktap_header
NCASES=$((${#REFUSE[@]} + ${#ACCEPT[@]} + ${#RUNTIME[@]}))
ktap_plan "$(_shard_count $NCASES)"
_shard_note $NCASES

N=0
# ------------------------------------------------------------------ REFUSE
for c in "${REFUSE[@]}"; do
	N=$((N + 1))
	_shard_mine "$N" || continue
	_split "$c"
	name=${FIELDS[0]} base=${FIELDS[1]} back=${FIELDS[2]} qemu=${FIELDS[3]}
	pat=${FIELDS[4]} action=${FIELDS[5]}
	desc="refused: $name"
	if ! _damage "$base" "$action"; then
		_result "$desc: generation" 1
		continue
	fi
	if _gen_only; then
		rc=0
		# (overlays name their backing file by absolute path)
		out=$(qemu-io -r -f qcow2 -c "read -q 0 512" "$F" 2>&1)
		qrc=$?
		if [ $qrc -eq 0 ]; then
			[ "$qemu" = open ] || { _qdiag "QEMU opens and reads this image"; rc=1; }
		else
			[ "$qemu" = refuse ] || { _qdiag "QEMU refuses this image: $(echo "$out" | tail -1)"; rc=1; }
			[ $qrc -gt 128 ] && out="qemu-io crashed (exit $qrc)"
			_qdiag "QEMU: $(echo "$out" | tail -1 | sed 's/^.*\.qcow2'"'"'*: //')"
		fi
		_result "$desc" $rc
		continue
	fi
	opts=()
	if [ "$back" != - ]; then
		bdev=$(_img_attach "$WORK/$back.qcow2") || { _result "$desc" 1; continue; }
		opts=(backing qcow2 "$bdev")
	fi
	dev=$(_img_attach "$F") || { _result "$desc" 1; continue; }
	_expect_refused "${QCOW2_DM_PREFIX}r$N" "$(_qcow2_table "$dev" "$LEN" "${opts[@]}")" "$pat"
	_result "$desc" $?
done

# _base_ref BASE   reference of an undamaged base image, converted once
_base_ref()
{
	QREF=$WORK/ref-$1.raw
	[ -f "$QREF" ] || _ref_raw "$WORK/$1.qcow2" "$QREF"
}

# ------------------------------------------------------------------ ACCEPT
for c in "${ACCEPT[@]}"; do
	N=$((N + 1))
	_shard_mine "$N" || continue
	_split "$c"
	name=${FIELDS[0]} base=${FIELDS[1]} action=${FIELDS[2]}
	desc="maps: $name"
	# reference from the undamaged base (the pokes must not change data)
	if ! _base_ref "$base" || ! _damage "$base" "$action"; then
		_result "$desc: generation" 1
		continue
	fi
	rc=0
	if _gen_only; then
		_ref_raw "$F" "$WORK/ref2.raw" && _cmp_dev_ref "$WORK/ref2.raw" "$QREF" ||
			{ _qdiag "QEMU reads the damaged image differently"; rc=1; }
	else
		_qmark
		if _map_image "${QCOW2_DM_PREFIX}a$N" "$F" "len:$LEN"; then
			_verify_dev "$MAP_DEV" "$QREF" 65536 "$N" || rc=1
			_check_status "${QCOW2_DM_PREFIX}a$N" 16777216 65536 1 0 || rc=1
			_unmap "${QCOW2_DM_PREFIX}a$N"
		else
			_qdiag "kernel log:" "$(_qdmesg | tail -3)"
			rc=1
		fi
		_check_dmesg_clean >/dev/null || { _qdiag "dmesg not clean"; rc=1; }
	fi
	_result "$desc" $rc
done

# ------------------------------------------------------------------ RUNTIME
# _range_ok DEV OFF LEN   direct reads of [OFF, OFF+LEN) match $QREF
_range_ok()
{
	local dev=$1 off=$2 len=$3
	[ "$len" -gt 0 ] || return 0
	_read_direct "$dev" "$off" "$len"
}

for c in "${RUNTIME[@]}"; do
	N=$((N + 1))
	_shard_mine "$N" || continue
	_split "$c"
	name=${FIELDS[0]} base=${FIELDS[1]} GOFF=${FIELDS[2]} blen=${FIELDS[3]}
	qemu=${FIELDS[4]} action=${FIELDS[5]}
	desc="runtime: $name"
	if ! _base_ref "$base" || ! _damage "$base" "$action"; then
		_result "$desc: generation" 1
		continue
	fi
	size=$(_size_of "$QREF")
	rc=0
	if _gen_only; then
		qemu-img info -U "$F" >/dev/null 2>&1 || { _qdiag "QEMU refuses to open it"; rc=1; }
		if [ "$qemu" = eio ]; then
			qemu-io -r -f qcow2 -c "read -q $GOFF 4096" "$F" >/dev/null 2>&1 &&
				{ _qdiag "QEMU reads the damaged range"; rc=1; }
		else
			qemu-io -r -f qcow2 -c "read -q $GOFF 4096" "$F" >/dev/null 2>&1 ||
				{ _qdiag "QEMU fails this read: mark the case eio"; rc=1; }
		fi
		cmp -s "$F" "$WORK/$base.qcow2" && { _qdiag "the damage changed nothing"; rc=1; }
		qemu-io -r -f qcow2 -c "read -q 0 $GOFF" "$F" >/dev/null 2>&1 || [ "$GOFF" = 0 ] ||
			{ _qdiag "QEMU cannot read before the damage"; rc=1; }
		end=$((GOFF + blen))
		qemu-io -r -f qcow2 -c "read -q $end $((size - end))" "$F" >/dev/null 2>&1 ||
			{ _qdiag "QEMU cannot read after the damage"; rc=1; }
		_result "$desc" $rc
		continue
	fi
	name_dm="${QCOW2_DM_PREFIX}t$N"
	_qmark
	if ! _map_image "$name_dm" "$F" "len:$LEN"; then
		_qdiag "the table must load (damage is only met when reading)" "$(_qdmesg | tail -3)"
		_result "$desc" 1
		continue
	fi
	if dd if="$MAP_DEV" of=/dev/null bs=4096 iflag=direct skip=$((GOFF / 4096)) count=1 status=none 2>/dev/null; then
		_qdiag "read of the damaged range at $GOFF succeeded"
		rc=1
	fi
	_qdmesg_has 'qcow2' || { _qdiag "no qcow2 message in the kernel log"; rc=1; }
	_range_ok "$MAP_DEV" 0 "$GOFF" || rc=1
	_range_ok "$MAP_DEV" $((GOFF + blen)) $((size - GOFF - blen)) || rc=1
	_check_status "$name_dm" "$size" "$(_cluster_size "$WORK/$base.qcow2")" 1 nonzero || rc=1
	_unmap "$name_dm"
	_check_dmesg_clean >/dev/null || { _qdiag "dmesg not clean"; rc=1; }
	_result "$desc" $rc
done

_qdiag "base images ${T_BASE}s; total $(_elapsed)s"
ktap_finish
