#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_read_fio.sh - concurrent O_DIRECT random reads verified by fio.
#
# fio writes a 64 MiB raw file with verify headers (4 jobs, each its own
# 16 MiB region, random order, block sizes 4k..64k, 60 % compressible
# buffers, crc32c, --do_verify=0).  The file is converted to qcow2 with
# qemu-img (64 KiB clusters, 4 KiB clusters, and zstd-compressed 64 KiB
# clusters); each image is written straight onto the first spare disk
# ($QCOW2_DISKS, run-vm.sh --disk), the disk is mapped read-only and fio
# replays the same job definition with --verify_only (random reads in the
# write order of each job: 4 jobs, libaio, iodepth 16, O_DIRECT) and
# --verify_fatal=1, and must succeed having read all 64 MiB.  The device is
# also compared with the raw file.  The 4 KiB-cluster image is mapped once
# more with cache_size 16384 (4 slices for its 32 L2 slices), so that the
# jobs' reads recycle slices all along while map() and the workers look up
# cached slices of the other jobs: an entry read from a slice recycled under
# it shows as bad data.
#
# fio 3.33 exits 0 when --verify_only finds bad data unless --verify_fatal=1
# is given, so a negative control runs the same verification over an image
# made from a copy of the raw file with one byte changed: fio must fail.
#
# GEN_ONLY=1 runs the generator and both fio verifications on the host
# against `qemu-img convert -O raw` of each image (and qemu-img compare of
# each image with the source).
#
# Measured on the development host (2 vCPU, idle): fio write ~0.5 s, four
# conversions ~0.5 s, GEN_ONLY=1 run ~3 s.  In the TCG test VM: ~30 s.

. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/qcow2_common.sh"

_qcow2_init fio
DISK=""
if ! _gen_only; then
	DISK=$(_disk 1) || exit
fi

FIO_JOB=(--name=qc2 --rw=randwrite --bs=4k --bsrange=4k-64k --numjobs=4 --size=16M
	--offset_increment=16M --verify=crc32c --randrepeat=1
	--buffer_compress_percentage=60 --refill_buffers --group_reporting
	--verify_state_save=0)
SRC=$WORK/src.raw
BAD=$WORK/bad.raw

# _fio_verify FILE_OR_DEV [extra fio options]   0 when every block verifies
# and all 64 MiB were read
_fio_verify()
{
	local target=$1 out=$WORK/fio.out rc
	shift
	fio "${FIO_JOB[@]}" --filename="$target" --ioengine=libaio --iodepth=16 \
		--verify_only=1 --verify_fatal=1 "$@" >"$out" 2>&1
	rc=$?
	if [ $rc -ne 0 ]; then
		_qdiag "fio verify of $target: exit $rc" \
			"$(grep -Ei 'verify|err=|error' "$out" | head -4)"
		return 1
	fi
	if grep -Eqi 'verify failed|bad (magic|header)|err= *[1-9]' "$out"; then
		_qdiag "fio reported errors but exited 0:" "$(grep -Ei 'verify|err=' "$out" | head -4)"
		return 1
	fi
	grep -q 'READ:.*io=64.0MiB' "$out" || {
		_qdiag "fio did not read 64 MiB: $(grep 'READ:' "$out")"
		return 1
	}
	return 0
}

t0=${EPOCHREALTIME//[.,]/}
fio "${FIO_JOB[@]}" --filename="$SRC" --ioengine=psync --do_verify=0 >"$WORK/fio.w" 2>&1 ||
	{ echo "# fio write failed: $(tail -3 "$WORK/fio.w")"; exit 1; }
[ "$(stat -c %s "$SRC")" = $((64 << 20)) ] || { echo "# fio wrote a file of the wrong size"; exit 1; }
cp "$SRC" "$BAD"
# one byte in the middle of the last job's region (every block is written)
printf '\x5a' | dd of="$BAD" bs=1 seek=$((50 * 1048576 + 4100)) conv=notrunc status=none
cmp -s "$SRC" "$BAD" && { echo "# negative control: the copy did not change"; exit 1; }
T_FIO=$(_elapsed "$t0")

t0=${EPOCHREALTIME//[.,]/}
# name:convert options
IMAGES=("64k:-o cluster_size=64k" "4k:-o cluster_size=4k" "zstd-64k:-c -o compression_type=zstd")
for im in "${IMAGES[@]}"; do
	# shellcheck disable=SC2086
	qemu-img convert -O qcow2 ${im#*:} "$SRC" "$WORK/${im%%:*}.qcow2" ||
		{ echo "# qemu-img convert ${im#*:} failed"; exit 1; }
done
qemu-img convert -O qcow2 "$BAD" "$WORK/bad.qcow2" || { echo "# qemu-img convert failed"; exit 1; }
T_CONV=$(_elapsed "$t0")

ktap_header
if _gen_only; then
	ktap_plan $((${#IMAGES[@]} + 1))
else
	ktap_plan $((${#IMAGES[@]} + 2))
fi

if _gen_only; then
	for im in "${IMAGES[@]}"; do
		r=0
		qemu-img compare -q -f qcow2 -F raw "$WORK/${im%%:*}.qcow2" "$SRC" || r=1
		[ "${im%%:*}" = zstd-64k ] && { _expect_stats "$WORK/zstd-64k.qcow2" compressed=100 || r=1; }
		# the image as QEMU reads it back
		_ref_raw "$WORK/${im%%:*}.qcow2" "$WORK/ref.raw" && _fio_verify "$WORK/ref.raw" || r=1
		rm -f "$WORK/ref.raw"
		_result "fio verify_only, ${im%%:*} image (host: qemu-img convert of it)" $r
	done
	r=0
	_ref_raw "$WORK/bad.qcow2" "$WORK/ref.raw" || r=1
	if _fio_verify "$WORK/ref.raw" >/dev/null; then
		_qdiag "fio verify_only passed on corrupted data"
		r=1
	fi
	_result "negative control: fio verify_only fails on a changed byte" $r
	_qdiag "fio write ${T_FIO}s, conversions ${T_CONV}s; total $(_elapsed)s"
	ktap_finish
fi

DISK_SIZE=$(blockdev --getsize64 "$DISK")

# _map_on_disk NAME IMAGE [OPTION...]   write IMAGE onto the disk and map it
_map_on_disk()
{
	local name=$1 img=$2 isz len
	shift 2
	truncate -s %4096 "$img"	# zeros past EOF change nothing; O_DIRECT needs it
	isz=$(stat -c %s "$img")
	[ "$isz" -le "$DISK_SIZE" ] || { _qdiag "$img ($isz bytes) does not fit on $DISK"; return 1; }
	dd if="$img" of="$DISK" bs=1M oflag=direct conv=fsync status=none ||
		{ _qdiag "dd onto $DISK failed"; return 1; }
	len=$(($(_vsize "$img") / 512))
	_dm_create "$name" "$(_qcow2_table "$DISK" "$len" "$@")" ro || return 1
	MAP_DEV=/dev/mapper/$name
	[ -b "$MAP_DEV" ]
}

for im in "${IMAGES[@]}"; do
	N=${im%%:*}
	name="${QCOW2_DM_PREFIX}fio$N"
	r=0
	_qmark
	if _map_on_disk "$name" "$WORK/$N.qcow2"; then
		_fio_verify "$MAP_DEV" --direct=1 || r=1
		_drop_cache "$MAP_DEV"
		_cmp_dev_ref "$MAP_DEV" "$SRC" || r=1
		_check_status "$name" $((64 << 20)) "$(_cluster_size "$WORK/$N.qcow2")" 1 0 || r=1
		_dm_remove "$name" >/dev/null 2>&1 || r=1
	else
		r=1
	fi
	_check_dmesg_clean >/dev/null || { _qdiag "dmesg not clean"; r=1; }
	_result "fio verify_only, 4 jobs, O_DIRECT, $N image on $DISK" $r
done

r=0
name="${QCOW2_DM_PREFIX}fio4ksmall"
_qmark
if _map_on_disk "$name" "$WORK/4k.qcow2" cache_size 16384; then
	_fio_verify "$MAP_DEV" --direct=1 || r=1
	_check_status "$name" $((64 << 20)) 4096 1 0 || r=1
	# about 2,000 reads in random order over 32 slices through 4 slots
	_qdiag "cache_size 16384: ${ST_MISSES:-?} slice misses"
	[ "${ST_MISSES:-0}" -ge 512 ] ||
		{ _qdiag "too few misses: the slices were not recycled"; r=1; }
	_dm_remove "$name" >/dev/null 2>&1 || r=1
else
	r=1
fi
_check_dmesg_clean >/dev/null || { _qdiag "dmesg not clean"; r=1; }
_result "fio verify_only, 4 jobs, 4k image, cache_size 16384 (4 slices for 32)" $r

r=0
name="${QCOW2_DM_PREFIX}fiobad"
_qmark
if _map_on_disk "$name" "$WORK/bad.qcow2"; then
	if _fio_verify "$MAP_DEV" --direct=1 >/dev/null; then
		_qdiag "fio verify_only passed on an image with a changed byte"
		r=1
	fi
	_dm_remove "$name" >/dev/null 2>&1
else
	r=1
fi
_result "negative control: fio verify_only fails on a changed byte" $r
_qdiag "fio write ${T_FIO}s, conversions ${T_CONV}s; total $(_elapsed)s"
ktap_finish
