#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_read_snapshot.sh - mapping internal snapshots read-only.
#
# Each image: data A, `qemu-img snapshot -c` (ID 1), overwrite with B
# (COW of shared clusters and L2 tables), snapshot (ID 2), overwrite with C.
# The table option `snapshot <id>` selects a snapshot by its ID string (the
# ID column of `qemu-img snapshot -l`); without it the active state is
# mapped.  Every view is compared with `qemu-img convert -l snapshot.id=N -O
# raw` (battery of reads, then the whole device).  Images: v3 64 KiB, v2
# 4 KiB, v3 512-byte clusters, zstd-compressed data captured by the
# snapshots, extended L2 with subcluster writes, snapshots whose *names* are
# the other snapshot's ID ("2" has ID 1, "1" has ID 2: the ID must win), and
# an image where snapshot 1 was deleted afterwards.
# Refusals (dmesg "qcow2: ...snapshot..."): a nonexistent ID, a snapshot
# *name* that is not an ID, and the ID of a deleted snapshot.
# With QCOW2_SHARD=K/N (check-vm, one shard per kernel) a run covers its
# shard of the images and the refusals on them.
#
# GEN_ONLY=1 validates on the host: each reference equals a qemu-io replay on
# a raw file of the phases up to that snapshot, the views all differ from one
# another (so a target mapping the wrong L1 cannot pass), qemu-img check is
# clean and the snapshot table lists the expected IDs.
#
# Measured on the development host (2 vCPU, idle): generation of the 7
# images ~1 s (plus ~2 s for the 20 references), GEN_ONLY=1 run ~6-7 s.  In
# the TCG test VM: ~150 s.

. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/qcow2_common.sh"

_qcow2_init

PAT=$WORK/pattern
_pattern_file "$PAT" 4093 99

# Three phases of writes, scaled to the cluster size C.
_phase()
{
	local c=$1 p=$2
	case $p in
	A) cat <<EOF
write -q -s $PAT 0 $((20 * c + 777))
write -q -P 0x1a $((40 * c + 100)) $((3 * c))
write -q -s $PAT 4M 1M
EOF
		;;
	B) cat <<EOF
write -q -P 0x2b $((c / 2)) $((c + 1))
write -q -P 0x2c $((10 * c)) $((5 * c))
write -q -z $((41 * c)) $c
write -q -P 0x2d 6M 64k
EOF
		;;
	C) cat <<EOF
write -q -P 0x3c 0 $((2 * c))
write -q -z -u $((12 * c)) $((2 * c))
discard -q $((16 * c)) $((2 * c))
write -q -s $PAT $((4194304 + 3 * c + 5)) $((c + 10))
write -q -P 0x3d 7M 4k
EOF
		;;
	esac
}

# _gen_image NAME OPTS CLUSTER_SIZE [SNAPNAME1 SNAPNAME2] [compress]
_gen_image()
{
	local name=$1 iopts=$2 c=$3 n1=${4:-s1} n2=${5:-s2} how=${6:-} raw
	IMG=$WORK/$name.qcow2 CS=$c
	rm -f "$IMG"
	raw=$WORK/$name.replay
	rm -f "$raw"
	truncate -s 8M "$raw"
	if [ "$how" = compress ]; then
		_phase "$c" A >"$WORK/cmds"
		QIO_FMT=raw _qio_file "$raw" "$WORK/cmds" || return 1
		qemu-img convert -c -O qcow2 -o "$iopts,cluster_size=$c" "$raw" "$IMG" || return 1
	else
		_mkimg "$IMG" 8M "$iopts,cluster_size=$c" || return 1
		_phase "$c" A >"$WORK/cmds"
		_qio_file "$IMG" "$WORK/cmds" || return 1
		QIO_FMT=raw _qio_file "$raw" "$WORK/cmds" || return 1
	fi
	cp "$raw" "$WORK/$name.exp1"
	qemu-img snapshot -c "$n1" "$IMG" || return 1
	_phase "$c" B >"$WORK/cmds"
	_qio_file "$IMG" "$WORK/cmds" || return 1
	QIO_FMT=raw _qio_file "$raw" "$WORK/cmds" || return 1
	cp "$raw" "$WORK/$name.exp2"
	qemu-img snapshot -c "$n2" "$IMG" || return 1
	_phase "$c" C >"$WORK/cmds"
	_qio_file "$IMG" "$WORK/cmds" || return 1
	QIO_FMT=raw _qio_file "$raw" "$WORK/cmds" || return 1
	mv "$raw" "$WORK/$name.exp0"
}

# name opts cluster_size [snapname1 snapname2 [compress]]
IMAGES=(
	"v3-64k compat=1.1 65536"
	"v2-4k compat=0.10 4096"
	"v3-512 compat=1.1,refcount_bits=64 512"
	"zstd-64k compat=1.1,compression_type=zstd 65536 s1 s2 compress"
	"extl2-32k compat=1.1,extended_l2=on 32768"
	"swapped-names compat=1.1 65536 2 1"
	"deleted compat=1.1 65536"
)
# views per image: "snapshot id or -" ; deleted: only active and 2
VIEWS=(- 1 2)

# Refusals: "image ID description"
NEGS=("v3-64k 7 nonexistent ID" "v3-64k s1 snapshot name instead of ID"
	"deleted 1 ID of a deleted snapshot" "swapped-names 3 nonexistent ID (names are numeric)")

# _views NAME   set views to the views of image NAME
_views()
{
	views=("${VIEWS[@]}")
	[ "$1" = deleted ] && views=(- 2)
}

# This shard's images (QCOW2_SHARD, one shard per kernel in check-vm) and
# the refusals on them.
NPLAN=1 MYNEGS=() I=0
for im in "${IMAGES[@]}"; do
	I=$((I + 1))
	_shard_mine "$I" || continue
	_views "${im%% *}"
	NPLAN=$((NPLAN + ${#views[@]}))
done
for neg in "${NEGS[@]}"; do
	I=$(_pos_of "${neg%% *}" "${IMAGES[@]%% *}") || { echo "no image ${neg%% *}" >&2; exit 1; }
	_shard_mine "$I" && MYNEGS+=("$neg")
done
NPLAN=$((NPLAN + ${#MYNEGS[@]}))
ktap_header
ktap_plan $NPLAN
_shard_note ${#IMAGES[@]}

GEN_US=0
N=0 I=0
for im in "${IMAGES[@]}"; do
	I=$((I + 1))
	_shard_mine "$I" || continue
	# shellcheck disable=SC2086
	set -- $im
	name=$1
	t0=${EPOCHREALTIME//[.,]/}
	_views "$name"
	if ! _gen_image "$@"; then
		for v in "${views[@]}"; do
			N=$((N + 1))
			_result "$name snapshot $v: generation" 1
		done
		continue
	fi
	if [ "$name" = deleted ]; then
		qemu-img snapshot -d s1 "$IMG" || _qdiag "snapshot -d failed"
	fi
	GEN_US=$((GEN_US + ${EPOCHREALTIME//[.,]/} - t0))
	for v in "${views[@]}"; do
		N=$((N + 1))
		QREF=$WORK/ref.raw
		desc="$name: ${v/-/active}"
		[ "$v" = - ] || desc="$name: snapshot $v"
		if [ "$v" = - ]; then
			_ref_raw "$IMG" "$QREF"
		else
			_ref_raw "$IMG" "$QREF" -l "snapshot.id=$v"
		fi || { _result "$desc: reference" 1; continue; }
		rc=0
		if _gen_only; then
			_qcheck "$IMG" || rc=1
			_cmp_dev_ref "$WORK/$name.exp${v/-/0}" "$QREF" ||
				{ _qdiag "reference != replay of the phases"; rc=1; }
			for o in 0 1 2; do
				[ "$o" = "${v/-/0}" ] && continue
				cmp -s "$WORK/$name.exp$o" "$QREF" &&
					{ _qdiag "view $v equals view $o: not discriminating"; rc=1; }
			done
			[ "$v" = - ] || _poke snap-list "$IMG" | grep -q "^$v " ||
				{ _qdiag "no snapshot with ID $v"; rc=1; }
			_read_battery "$WORK/$name.exp${v/-/0}" "$QREF" "$CS" "$N" || rc=1
		else
			dev="${QCOW2_DM_PREFIX}s$N"
			specs=("len:16384")
			[ "$v" = - ] || specs+=("snapshot:$v")
			if _map_image "$dev" "$IMG" "${specs[@]}"; then
				_check_table "$dev" "$MAP_TABLE_MM" || rc=1
				_verify_dev "$MAP_DEV" "$QREF" "$CS" "$N" || rc=1
				_check_status "$dev" 8388608 "$CS" 1 0 || rc=1
				_unmap "$dev"
			else
				rc=1
			fi
		fi
		_result "$desc" $rc
	done
done

_dmesg_clean_result "kernel log clean after the views"

# Refusals
for neg in "${MYNEGS[@]}"; do
	N=$((N + 1))
	# shellcheck disable=SC2086
	set -- $neg
	img=$WORK/$1.qcow2 id=$2
	shift 2
	desc="refused: snapshot $id ($*)"
	if _gen_only; then
		rc=0
		_poke snap-list "$img" | grep -q "^$id " && { _qdiag "ID $id exists"; rc=1; }
		qemu-img convert -U -l "snapshot.id=$id" -O raw "$img" "$WORK/x.raw" 2>/dev/null &&
			{ _qdiag "qemu-img found snapshot ID $id"; rc=1; }
		_result "$desc" $rc
		continue
	fi
	dev=$(_img_attach "$img") || { _result "$desc" 1; continue; }
	_expect_refused "${QCOW2_DM_PREFIX}sn$N" \
		"$(_qcow2_table "$dev" 16384 snapshot "$id")" "snapshot"
	_result "$desc" $?
done
_qdiag "image generation: $(_fmt_us $GEN_US)s; total $(_elapsed)s"
ktap_finish
