#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_write_fio.sh - concurrent writers through a writable mapping (fio).
#
# A 1 GiB qcow2 image (64 KiB clusters) is created straight on the first
# spare disk ($QCOW2_DISKS; skipped without one) and mapped read-write:
#   a) four jobs with their own regions, random writes of 4k / 16k / 64k /
#      12k blocks, libaio, iodepth 16, O_DIRECT, verify=crc32c (each job
#      reads back and checks what it wrote);
#   b) four jobs writing the same 32 MiB region with different block sizes
#      and a fifth trimming it, concurrently (no verify: the jobs overwrite
#      each other), then one sequential write pass over the region with
#      verify, which proves the mapping is consistent afterwards;
#   d) four jobs writing interleaved 4k blocks of the same fresh clusters
#      (concurrent allocations of one cluster), verify, and QEMU must read
#      the region as we do;
#   c) as a), with `cache_size 65536` (16 slices for 32 L2 slices and the
#      refcount blocks: constant eviction and writeback) and regions
#      covering the whole disk.
#   e) an overlay (files in $WORK) over a backing image with data in all its
#      clusters, the backing behind dm-delay (reads take 1 s): 4k random
#      writes over 8 MiB (128 clusters) at iodepth 1024, verify.  Each
#      cluster's first write copies it in map() and holds its cluster lock
#      until the copy is written; meanwhile the other writes wait for those
#      locks on the workers, far more of them than a workqueue runs at once.
#      A copy whose write queued behind them would never finish.  QEMU must
#      read the region as we do.  With reads of 100 ms only 422 writes
#      waited in one CI run (6.1, 2026-12-06): fio had not queued them all
#      while the copies held their locks; with 1 s, 995 (the part takes
#      95 s instead of 24).
# After each part the device is removed and `qemu-img check` must exit 0
# (no corruption, no leaks); the image is mapped again for the next part,
# so every part also starts from an image the kernel wrote and QEMU checked.

. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/qcow2_common.sh"
. "$(dirname "$0")/qcow2_write_common.sh"

_qcow2_init fio
DISK=$(_disk 1) || exit
M=$((1 << 20))
G=$((1 << 30))
DISK_SIZE=$(blockdev --getsize64 "$DISK")
VS=$G
[ "$DISK_SIZE" -ge $((VS + VS / 4)) ] || VS=$(((DISK_SIZE / 2) & ~(64 * M - 1)))
[ "$VS" -ge $((256 * M)) ] || _skip "$DISK is too small ($DISK_SIZE bytes)"
DM=${QCOW2_DM_PREFIX}fio
SEED=$(_wseed)
echo "# image of $VS bytes on $DISK ($DISK_SIZE bytes), fio seed $SEED"

ktap_header
ktap_plan 8

# _fio NAME JOBFILE   run fio; fails on a non-zero exit or any error report
_fio()
{
	local out rc
	_wbg_wait 400 fio --output-format=normal --output="$WORK/fio.$1.out" "$2" >/dev/null
	rc=$?
	[ $rc -ne 124 ] || _fail "fio $1 hangs"
	out=$(cat "$WORK/fio.$1.out" 2>/dev/null)
	if [ $rc -ne 0 ] || echo "$out" | grep -Eq 'verify: bad|crc32c: verify failed|err= *[1-9]|fio: (io_u error|pid=.*error)'; then
		_qdiag "fio $1 failed (exit $rc):" "$(echo "$out" | grep -Ei 'error|verify|err=|bad' | head -12)"
		return 1
	fi
	_qdiag "fio $1: $(echo "$out" | grep -E '^ *(WRITE|READ|TRIM):' | sed 's/^ *//' | tr '\n' ' ')"
	return 0
}

# _jobs_own REGION_SIZE IO_SIZE BASE   four jobs, own regions, with verify
_jobs_own()
{
	local region=$1 io=$2 base=$3 i bs
	local -a bss=(4k 16k 64k 12k)
	cat <<EOF
[global]
filename=$MAP_DEV
ioengine=libaio
iodepth=16
direct=1
rw=randwrite
verify=crc32c
do_verify=1
verify_fatal=1
verify_dump=0
randseed=$SEED
size=$region
io_size=$io
EOF
	for i in 0 1 2 3; do
		bs=${bss[i]}
		printf '[own%d]\nbs=%s\noffset=%d\n' "$i" "$bs" $((base + i * region))
	done
}

# _unmap_check   remove the device and qemu-img check the disk: exit 0
_unmap_check()
{
	local rc=0
	_wunmap "$DM"
	_wcheck "$DISK" || rc=1
	[ "$(_get_be "$DISK" 4 4)" -lt 3 ] || _wheader_clean "$DISK" || rc=1
	return $rc
}

_map()
{
	local -a opts=()
	[ -n "${1:-}" ] && opts=(cache_size "$1")
	_dm_create "$DM" "$(_qcow2_table "$DISK" $((VS / 512)) "${opts[@]}")" || {
		_qdiag "dmsetup create failed"
		return 1
	}
	MAP_DEV=/dev/mapper/$DM
	[ -b "$MAP_DEV" ] || dmsetup mknodes "$DM"
	_check_wstatus "$DM" rw
}

# --- map ------------------------------------------------------------------
rc=0
# a stale header of an earlier run must not be taken for ours
dd if=/dev/zero of="$DISK" bs=1M count=4 oflag=direct status=none
qemu-img create -q -f qcow2 -o cluster_size=64k "$DISK" "$VS" ||
	{ _qdiag "qemu-img create on $DISK failed"; rc=1; }
[ $rc -eq 0 ] && { _map || rc=1; }
_result "qcow2 image created on $DISK, mapped read-write" $rc
[ $rc -eq 0 ] || ktap_finish

# --- a) ---------------------------------------------------------------------
t0=${EPOCHREALTIME//[.,]/}
_jobs_own $((32 * M)) $((8 * M)) 0 >"$WORK/a.fio"
rc=0
_fio a "$WORK/a.fio" || rc=1
_check_wstatus "$DM" rw || rc=1
_qdiag "status: $WS_LINE ($(_elapsed "$t0") s)"
_result "a) 4 jobs, own regions, randwrite 4k/16k/64k/12k, verify crc32c" $rc
rc=0
_unmap_check || rc=1
_result "a) qemu-img check exit 0" $rc

# --- b) ---------------------------------------------------------------------
t0=${EPOCHREALTIME//[.,]/}
rc=0
_map || rc=1
cat >"$WORK/b.fio" <<EOF
[global]
filename=$MAP_DEV
ioengine=libaio
iodepth=16
direct=1
randseed=$SEED
offset=$((128 * M))
size=$((32 * M))
io_size=$((6 * M))
[over4k]
rw=randwrite
bs=4k
[over16k]
rw=randwrite
bs=16k
[over64k]
rw=randwrite
bs=64k
[over8k]
rw=randwrite
bs=8k
offset=$((128 * M + 2048))
size=$((32 * M - 4096))
[trim]
rw=randtrim
bs=64k
io_size=$((4 * M))
EOF
cat >"$WORK/b2.fio" <<EOF
[seqverify]
filename=$MAP_DEV
ioengine=libaio
iodepth=16
direct=1
rw=write
bs=64k
offset=$((128 * M))
size=$((32 * M))
verify=crc32c
do_verify=1
verify_fatal=1
verify_dump=0
EOF
[ $rc -eq 0 ] && { _fio b-overlap "$WORK/b.fio" || rc=1; }
[ $rc -eq 0 ] && { _fio b-verify "$WORK/b2.fio" || rc=1; }
_check_wstatus "$DM" rw || rc=1
_qdiag "status: $WS_LINE ($(_elapsed "$t0") s)"
_result "b) 4 overlapping writers + trim, then a verified sequential pass" $rc
rc=0
_unmap_check || rc=1
_result "b) qemu-img check exit 0" $rc

# --- d) ---------------------------------------------------------------------
# Four jobs write interleaved 4k blocks (job i: blocks i, i + 4, ...) of the
# same fresh clusters, so that writes allocate one cluster at the same time:
# in map() or by a worker that waits for the cluster lock.  A cluster
# allocated twice, or an entry stored before its data, loses blocks: fio
# reads every block back, and QEMU's view of the region must equal ours.
t0=${EPOCHREALTIME//[.,]/}
rc=0
_map || rc=1
D_MB=160
cat >"$WORK/d.fio" <<EOF
[global]
filename=$MAP_DEV
ioengine=libaio
iodepth=16
direct=1
bs=4k
rw=write:12k
size=$((8 * M))
verify=crc32c
do_verify=1
verify_fatal=1
verify_dump=0
EOF
for i in 0 1 2 3; do
	printf '[il%d]\noffset=%d\n' "$i" $((D_MB * M + i * 4096)) >>"$WORK/d.fio"
done
[ $rc -eq 0 ] && { _fio d-interleaved "$WORK/d.fio" || rc=1; }
[ $rc -eq 0 ] && { dd if="$MAP_DEV" of="$WORK/d.dm" bs=1M skip=$D_MB count=8 iflag=direct \
	status=none || rc=1; }
_check_wstatus "$DM" rw || rc=1
_qdiag "status: $WS_LINE ($(_elapsed "$t0") s)"
_unmap_check || rc=1
if [ $rc -eq 0 ]; then
	# (qemu-img dd cuts the input to count before it skips)
	qemu-img dd -f qcow2 -O raw bs=8M skip=$((D_MB / 8)) count=$((D_MB / 8 + 1)) \
		if="$DISK" of="$WORK/d.qemu" ||
		{ _qdiag "qemu-img dd failed"; rc=1; }
fi
if [ $rc -eq 0 ] && ! cmp -s "$WORK/d.dm" "$WORK/d.qemu"; then
	_qdiag "QEMU reads the interleaved region differently: $(cmp "$WORK/d.dm" "$WORK/d.qemu" | head -1)"
	rc=1
fi
if [ $rc -eq 0 ] && cmp -s -n 4096 "$WORK/d.dm" /dev/zero; then
	_qdiag "the region's first block reads as zeros: fio wrote nothing there"
	rc=1
fi
rm -f "$WORK/d.dm" "$WORK/d.qemu"
_result "d) 4 jobs, interleaved 4k blocks of shared fresh clusters: verify; QEMU reads the same; qemu-img check exit 0" $rc

# --- e) ---------------------------------------------------------------------
# _storm   part e): prints its diagnostics, returns non-zero on a failure
_storm()
{
	local base=$WORK/e-base.qcow2 ovl=$WORK/e-ovl.qcow2 dm=${DM}e delay=${DM}edelay
	local dev=/dev/mapper/${DM}e bloop loop copies deferred map rc=0

	qemu-img create -q -f qcow2 -o cluster_size=64k "$base" $((8 * M)) &&
		qemu-io -f qcow2 -c "write -P 0x5a 0 8M" "$base" >/dev/null &&
		qemu-img create -q -f qcow2 -o cluster_size=64k -b "$base" -F qcow2 "$ovl" &&
		_wroom "$ovl" $((8 * M)) || { _qdiag "cannot make the overlay"; return 1; }
	bloop=$(_wloop_attach "$base" --read-only) &&
		_dm_create "$delay" "0 $(blockdev --getsz "$bloop") delay $bloop 0 1000" ro &&
		loop=$(_wimg_attach "$ovl") &&
		_dm_create "$dm" "$(_qcow2_table "$loop" $((8 * M / 512)) backing qcow2 \
			"/dev/mapper/$delay")" || { _qdiag "cannot map the overlay over dm-delay"; return 1; }
	# The L2 table first (a worker makes it), so that the copies are made in map().
	dd if=/dev/zero of="$dev" bs=4k count=1 oflag=direct status=none || rc=1
	copies=$(_wstat "$dm" copies) deferred=$(_wstat "$dm" deferred) map=$(_wstat "$dm" map_allocs)
	cat >"$WORK/e.fio" <<EOF
[storm]
filename=$dev
ioengine=libaio
iodepth=1024
direct=1
rw=randwrite
bs=4k
size=$((8 * M))
verify=crc32c
do_verify=1
verify_fatal=1
verify_dump=0
randseed=$SEED
EOF
	[ $rc -eq 0 ] && { _fio e-storm "$WORK/e.fio" || rc=1; }
	[ $rc -eq 0 ] || return 1
	copies=$(($(_wstat "$dm" copies) - copies))
	deferred=$(($(_wstat "$dm" deferred) - deferred))
	map=$(($(_wstat "$dm" map_allocs) - map))
	_qdiag "e) copies $copies (in map(): $map), writes deferred to workers $deferred"
	# One copy per cluster, at least one made in map() (all 127 in every
	# run so far; one that finds no page or bio without waiting is left to
	# a worker); more waiters than a workqueue runs at once (max_active
	# 256), else the test proves nothing.
	[ "$copies" -eq 127 ] || { _qdiag "expected 127 copies"; rc=1; }
	[ "$map" -ge 1 ] || { _qdiag "no copy was made in map()"; rc=1; }
	[ "$deferred" -ge 512 ] || { _qdiag "too few writes waited for a cluster: no storm"; rc=1; }
	dd if="$dev" of="$WORK/e.dm" bs=1M count=8 iflag=direct status=none || rc=1
	_dm_remove "$dm" >/dev/null || rc=1
	_dm_remove "$delay" >/dev/null || rc=1
	[ $rc -eq 0 ] || return 1
	_wcheck "$ovl" || rc=1
	_wconvert "$ovl" "$WORK/e.qemu" || rc=1
	cmp -s "$WORK/e.dm" "$WORK/e.qemu" ||
		{ _qdiag "QEMU reads the overlay differently: $(cmp "$WORK/e.dm" "$WORK/e.qemu" | head -1)"; rc=1; }
	rm -f "$WORK/e.dm" "$WORK/e.qemu"
	return $rc
}

E_NAME="e) 1024 writes queued behind copies in map() over a slow backing: verify; QEMU reads the same; qemu-img check exit 0"
if _have_dm_target delay; then
	t0=${EPOCHREALTIME//[.,]/}
	rc=0
	_storm || rc=1
	_qdiag "e) $(_elapsed "$t0") s"
	_result "$E_NAME" $rc
else
	ktap_skip "$E_NAME" "no dm-delay target in this kernel"
fi

# --- c) ---------------------------------------------------------------------
t0=${EPOCHREALTIME//[.,]/}
rc=0
_map 65536 || rc=1
_jobs_own $((VS / 4)) $((4 * M)) 0 >"$WORK/c.fio"
[ $rc -eq 0 ] && { _fio c "$WORK/c.fio" || rc=1; }
if _check_wstatus "$DM" rw; then
	_qdiag "status: $WS_LINE ($(_elapsed "$t0") s)"
	_wcache_pressured || { _qdiag "the cache never filled: no pressure"; rc=1; }
else
	rc=1
fi
_unmap_check || rc=1
_check_dmesg_clean || rc=1
_result "c) cache_size 65536: 4 jobs over the whole disk, verify; qemu-img check exit 0" $rc

ktap_finish
