#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_read_compressed.sh - reading compressed clusters.
#
# Covers deflate (raw RFC 1951, compression_type 0) and zstd (type 1, incompat
# bit 3) images made by `qemu-img convert -c`, cluster sizes 512 B, 4 KiB,
# 64 KiB and 2 MiB, v2 and v3, extended L2.  The source data mixes, per
# cluster: 60 % random + zeros (streams of ~0.6 cluster packed back to back,
# so many straddle host-cluster boundaries), compressible text (several
# streams per host cluster), incompressible random data (stored as normal
# clusters), all-zero clusters (left unallocated), a random head + constant
# tail, and a single non-zero byte.  Also: a virtual size that is not a
# multiple of the cluster size (zero-padded last compressed cluster), an image
# mixing `qemu-io write -c` clusters with normal, zeroed and discarded ones
# and with compressed clusters partially overwritten (COW from compressed),
# and compressed images used as the base of a qcow2 overlay (with a different
# cluster size and with extended L2 in the overlay).  Every device is compared
# with `qemu-img convert -O raw` (battery of reads, then the whole device).
#
# GEN_ONLY=1 validates the generators on the host: the converted reference
# equals the raw source (or the qemu-io replay on a raw file), qemu-img check
# is clean, and qcow2_poke.py stats confirms compressed clusters, straddling
# streams, normal (incompressible) and unallocated clusters are present.
#
# With QCOW2_SHARD=K/N (check-vm, one shard per kernel) a run maps its shard
# of the cases; an overlay case makes its base case's image if that is
# another shard's.
#
# Measured on the development host (2 vCPU, idle): generation of all 15
# images ~4 s, GEN_ONLY=1 run ~10 s.  In the TCG test VM: ~110 s (generation
# ~60 s: deflate under TCG is slow, hence the small images).

. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/qcow2_common.sh"

_qcow2_init

# _gen_src FILE SIZE CLUSTER_SIZE SEED   mixed-compressibility raw source
_gen_src()
{
	python3 - "$@" <<'EOF'
import random, sys
out, size, cs, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
r = random.Random(seed)
words = b"qcow2 cluster refcount snapshot backing compressed deflate zstd kernel device mapper".split()
with open(out, "wb") as f:
    for i in range((size + cs - 1) // cs):
        k = i % 8
        if k in (0, 4, 6):          # ~60 % random: long streams, straddling
            b = r.randbytes(cs * 6 // 10) + bytes(cs - cs * 6 // 10)
        elif k == 1:                # text: short streams, packed
            t = b" ".join(r.choice(words) for _ in range(cs // 4))
            b = (t * 2)[:cs]
        elif k == 2:                # incompressible: stored uncompressed
            b = r.randbytes(cs)
        elif k == 3:                # zeros: unallocated
            b = bytes(cs)
        elif k == 5:
            b = r.randbytes(cs // 10) + bytes([r.randrange(1, 256)]) * (cs - cs // 10)
        else:                       # one non-zero byte
            b = bytearray(cs)
            b[r.randrange(cs)] = r.randrange(1, 256)
            b = bytes(b)
        f.write(b[:min(cs, size - i * cs)])
EOF
}

PAT=$WORK/pattern
_pattern_file "$PAT" 4093 77

# name  kind  args...
#   conv CT CS SIZE [extra -o opts]    qemu-img convert -c of a mixed source
#   mixed                              qemu-io write -c mixed with other ops
#   cow CT CS                          convert -c, then normal overwrites
#   overlay BASE_CASE OV_OPTS          qcow2 overlay over a compressed case
CASES=(
	"deflate-512 conv zlib 512 2M"
	"zstd-512 conv zstd 512 2M"
	"deflate-4k conv zlib 4k 4M"
	"zstd-4k conv zstd 4k 4M"
	"deflate-64k conv zlib 64k 8M"
	"zstd-64k conv zstd 64k 8M"
	"deflate-2M conv zlib 2M 16M"
	"zstd-2M conv zstd 2M 16M"
	"deflate-64k-v2 conv zlib 64k 8M compat=0.10"
	"zstd-64k-extl2 conv zstd 64k 8M extended_l2=on"
	"deflate-64k-oddsize conv zlib 64k 8423936"
	"deflate-64k-writec mixed"
	"zstd-4k-cow cow zstd 4k"
	"overlay-4k-over-deflate-64k overlay deflate-64k cluster_size=4k"
	"overlay-extl2-over-zstd-2M overlay zstd-2M cluster_size=64k,extended_l2=on"
)

_bytes()
{
	case "$1" in
	*k) echo $((${1%k} * 1024)) ;;
	*M) echo $((${1%M} * 1048576)) ;;
	*) echo "$1" ;;
	esac
}

# Every case leaves IMG (to map), SPECS (backing specs), CS, and for the
# oracle SRC (expected raw content) and WANT (stats minimums).
_gen_case()
{
	local name=$1 kind=$2 ct cs size extra opts
	IMG=$WORK/$name.qcow2 SPECS=() SRC=$WORK/$name.src WANT=()
	case "$kind" in
	conv)
		ct=$3 cs=$(_bytes "$4") size=$(_bytes "$5") extra=${6:-}
		opts="cluster_size=$cs"
		[ "$ct" = zstd ] && opts="$opts,compression_type=zstd"
		opts="$opts${extra:+,$extra}"
		# the same source serves the deflate and the zstd case
		if [ ! -f "$WORK/src-$cs-$size" ]; then
			_gen_src "$WORK/src-$cs-$size" "$size" "$cs" "$cs" || return 1
		fi
		cp "$WORK/src-$cs-$size" "$SRC" || return 1
		qemu-img convert -c -O qcow2 -o "$opts" "$SRC" "$IMG" || return 1
		CS=$cs
		WANT=(compressed=2 compressed_straddle=1 normal=1 unallocated=1)
		;;
	mixed)
		CS=65536
		_mkimg "$IMG" 8M "cluster_size=64k" || return 1
		cat >"$WORK/cmds" <<EOF
write -q -c -s $PAT 0 64k
write -q -c -P 0x11 64k 64k
write -q -s $PAT 128k 64k
write -q -c -s $PAT 192k 64k
write -q -z 256k 64k
write -q -c -P 0x22 320k 64k
write -q -P 0x33 400k 20k
write -q -c -s $PAT 448k 64k
write -q -P 0x44 450k 1000
write -q -c -s $PAT 512k 64k
write -q -z 512k 64k
write -q -c -s $PAT 576k 64k
discard -q 576k 64k
write -q -c -s $PAT 8128k 64k
EOF
		truncate -s 8M "$SRC"
		sed 's/ -c / /' "$WORK/cmds" >"$WORK/cmds.raw"
		QIO_FMT=raw _qio_file "$SRC" "$WORK/cmds.raw" || return 1
		_qio_file "$IMG" "$WORK/cmds" || return 1
		WANT=(compressed=4 normal=2 zero_plain=1 unallocated=1)
		;;
	cow)
		ct=$3 cs=$(_bytes "$4")
		_gen_src "$SRC" $((4 << 20)) "$cs" 5 || return 1
		qemu-img convert -c -O qcow2 -o "cluster_size=$cs,compression_type=$ct" "$SRC" "$IMG" || return 1
		cat >"$WORK/cmds" <<EOF
write -q -P 0x55 100 200
write -q -s $PAT $((cs * 4 + 512)) $((cs * 3))
write -q -z $((cs * 9)) $cs
write -q -z -u $((cs * 16)) $((cs / 2))
discard -q $((cs * 24)) $((cs * 2))
write -q -P 0x66 $((cs * 40 - 10)) 20
write -q -P 0x67 $((4194304 - 100)) 100
EOF
		QIO_FMT=raw _qio_file "$SRC" "$WORK/cmds" || return 1
		_qio_file "$IMG" "$WORK/cmds" || return 1
		CS=$cs
		WANT=(compressed=100 normal=5 zero_plain=1 unallocated=1)
		;;
	overlay)
		local base=$WORK/$3.qcow2 ov_opts=$4 bsize b
		# the base case may be another shard's: make it here
		if [ ! -f "$base" ]; then
			b=$(_pos_of "$3" "${CASES[@]%% *}") || { _qdiag "no case $3"; return 1; }
			# shellcheck disable=SC2086 # a case line is words
			(_gen_case ${CASES[b - 1]}) ||
				{ _qdiag "base $3: generation failed"; return 1; }
		fi
		bsize=$(_vsize "$base")
		_mkimg "$IMG" "$bsize" "$ov_opts,backing_file=$base,backing_fmt=qcow2" || return 1
		CS=$(_cluster_size "$IMG")
		cat >"$WORK/cmds" <<EOF
write -q -P 0x71 1000 3000
write -q -s $PAT $((bsize / 2 - 7000)) 70000
write -q -z $((bsize / 4)) $((CS * 2))
write -q -P 0x72 $((bsize - 4096)) 512
EOF
		_ref_raw "$base" "$SRC" || return 1
		QIO_FMT=raw _qio_file "$SRC" "$WORK/cmds" || return 1
		_qio_file "$IMG" "$WORK/cmds" || return 1
		SPECS=("qcow2:$base")
		WANT=(normal=1 unallocated=1)
		;;
	*)
		return 1
		;;
	esac
	return 0
}

_oracle_case()
{
	local rc=0
	_qcheck "$IMG" || rc=1
	_cmp_dev_ref "$SRC" "$QREF" || { _qdiag "reference != source"; rc=1; }
	_expect_stats "$IMG" "${WANT[@]}" || rc=1
	case "$NAME" in
	zstd-*)
		[ "$(_poke header-get "$IMG" compression_type)" = 1 ] ||
			{ _qdiag "not a zstd image"; rc=1; }
		;;
	esac
	_read_battery "$SRC" "$QREF" "$CS" 3 || rc=1
	return $rc
}

_map_case()
{
	local rc=0 dev="${QCOW2_DM_PREFIX}c$N"
	_map_image "$dev" "$IMG" "${SPECS[@]}" || return 1
	_check_table "$dev" "$MAP_TABLE_MM" || rc=1
	_verify_dev "$MAP_DEV" "$QREF" "$CS" "$N" || rc=1
	_check_status "$dev" "$MAP_VSIZE" "$CS" "$MAP_LAYERS" 0 || rc=1
	_unmap "$dev"
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
	# shellcheck disable=SC2086
	set -- $c
	NAME=$1
	t0=${EPOCHREALTIME//[.,]/}
	QREF=$WORK/ref.raw
	if ! _gen_case "$@" || ! _ref_raw "$IMG" "$QREF"; then
		_result "$NAME: generation" 1
		continue
	fi
	GEN_US=$((GEN_US + ${EPOCHREALTIME//[.,]/} - t0))
	tg=$(_elapsed "$t0")
	if _gen_only; then
		_oracle_case
	else
		_map_case
	fi
	_result "$NAME" $?
	[ -z "$QCOW2_TIMING" ] || _qdiag "case $N: generation ${tg}s, total $(_elapsed "$t0")s"
	# keep images that later cases use as a base
	rm -f "$QREF" "$SRC"
done
_dmesg_clean_result "kernel log clean"
_qdiag "image generation: $(_fmt_us $GEN_US)s; total $(_elapsed)s"
ktap_finish
