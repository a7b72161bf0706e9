#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_write_faults.sh - device faults under a writable qcow2 mapping.
#
# Each scenario puts a 64 MiB image (64 KiB clusters, 1 MiB written by QEMU)
# on its own 128 MiB region of a spare disk, behind a "lower" dm device that
# is dm-linear while healthy and is reloaded to dm-flakey or dm-error to
# inject the fault; the qcow2 target maps the lower device read-write.
# Before the fault, data is written through the target and fsync()ed: it is
# "acknowledged".  A background workload writes one 64 KiB chunk at a time
# into unallocated clusters with O_DIRECT and fsync (dd conv=fsync) and
# records every chunk whose write and fsync both succeeded.
#
#  1. error_writes (dm-flakey) during the workload: the workload gets EIO;
#     if dirty metadata is left, the next flush fails and the mode is
#     "fail"; the device can be removed.
#  2. failing reads (dm-flakey error_reads; on kernels without it, a flakey
#     down interval without features, where all I/O fails) on a mapping
#     with a cold metadata cache: reads return EIO, the mode stays "rw", and
#     after the lower device is restored the same mapping reads the data.
#  3. drop_writes during the workload: the target cannot notice.  What is
#     asserted: no crash or hang; data acknowledged before the switch still
#     reads back through the target; the mapping is removed while writes are
#     still dropped, so the image on disk is exactly what was written before
#     the switch (the lower device's suspend drains in-flight I/O), i.e. a
#     state in which every write completed before the switch is durable.
#     Since the target issues a write only after the writes it depends on
#     completed (and were flushed), that is a valid crash state: qemu-img
#     check must find no corruption and every chunk acknowledged before the
#     switch must be intact.  Nothing is asserted about writes after it.
#  4. the device disappears (dm-error over the whole region) during the
#     workload: errors are returned, reads fail, the workload exits and
#     `dmsetup remove` works.
#  5. errors only on metadata writes: dm-flakey error_writes on the
#     clusters holding the header, refcount table and blocks, L1 and L2
#     tables, dm-linear elsewhere.  Allocating writes leave dirty metadata
#     (required), the flush must fail, the mode must become "fail", and a
#     second flush must fail too (whether reads and in-place writes are
#     served in fail mode is reported, not asserted: not documented).
#  6. reads of a backing image fail during copy-on-write: the backing image
#     (4 MiB of 0x5a written by QEMU) is on the lower device, the overlay
#     (64 KiB clusters) in a file.  One 4 KiB write makes the overlay's L2
#     table and caches the backing metadata; then the lower device becomes
#     dm-error and 4 KiB writes into 8 more clusters must all fail with EIO,
#     at least one of them allocated and copied in map() (stats map_allocs
#     and copies: the read of the fill fails after the cluster was taken),
#     the mode stays rw.  After the lower device is restored the same writes
#     succeed on the same mapping, and after removal `qemu-img check` of the
#     overlay exits 0 (the failed writes gave their clusters back: no leak)
#     and QEMU reads the writes amid the backing data.
#  7. data writes of new clusters fail: dm-flakey error_writes from the
#     image's end on, dm-linear before it (the metadata).  Four 1 MiB
#     aligned writes into clusters without data must all fail with EIO, at
#     least one of them allocated in map() (16 whole clusters at once,
#     stats map_allocs), the mode stays rw.  After the lower device is
#     restored the same writes succeed on the same mapping, and after
#     removal `qemu-img check` exits 0 (the failed writes gave their
#     clusters back: no leak) and QEMU reads the writes.
#  8. data writes into subclusters fail (extended L2): QEMU writes the first
#     subcluster (2 KiB) of 8 clusters, so that each has a host cluster with
#     the rest unallocated; dm-flakey error_writes over those host clusters,
#     dm-linear elsewhere.  A 4 KiB write (whole subclusters) and a 1 KiB
#     write (a subcluster with zeros around it) into each must all fail
#     with EIO, at least one of them in map() (stats map_writes: such a
#     write needs no allocation, only the entry's bitmap once written), the
#     mode stays rw.  After the lower device is restored the same writes
#     succeed on the same mapping, all 16 in map(); after removal `qemu-img
#     check` exits 0 (a failed write must not give back the cluster, which
#     its entry still maps) and QEMU reads the writes, QEMU's subclusters
#     and zeros in between.
#
# After every fault the mapping is removed, the lower device restored to
# dm-linear and: `qemu-img check` finds no corruption (exit 0, or 3 for
# leaks), the header has neither the dirty nor the corrupt bit, every
# acknowledged range reads back identically through QEMU (qemu-img convert)
# and through a new mapping of the image.  Under error faults every chunk
# the workload acknowledged counts, even after the fault started (the target
# must not acknowledge a write that failed); under dropped writes only those
# acknowledged before the switch.
#
# With QCOW2_SHARD=K/N only scenarios K, K+N, ... run (make check splits
# them between its two kernels' VMs).

. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/qcow2_common.sh"
. "$(dirname "$0")/qcow2_write_common.sh"

_qcow2_init cmp dd sync
_gen_only && _skip "GEN_ONLY: this test has no image-only part"
_require_dm_target linear
_require_dm_target error
_require_dm_target flakey
DISK=$(_disk 1) || exit

MARK0=$_DMESG_MARK
MARK0_LINES=$_DMESG_MARK_LINES
SEED=$(_wseed)
echo "# seed $SEED (reproduce with QCOW2_SEED=$SEED)"
M=$((1 << 20))
CS=$((64 << 10))
VS=$((64 * M))
REGION=$((128 * M))
RSECT=$((REGION / 512))
P=${QCOW2_DM_PREFIX}f
DATA=$WORK/data
# the workload writes chunk i at guest WL_BASE + i * CS
WL_BASE=$((16 * M))
WL_MAX=384
NSCEN=8
SCEN_PASS=0

# scenario N uses the region at N * REGION
[ "$(blockdev --getsize64 "$DISK")" -ge $(((NSCEN + 1) * REGION)) ] ||
	_skip "$DISK is smaller than $(((NSCEN + 1) * REGION / M)) MiB"

ktap_header
ktap_plan $(($(_shard_count $NSCEN) * 3 + 1))
_shard_note $NSCEN

_diffwork fill "$DATA" $((32 * M)) --seed "$SEED" || _fail "cannot make test data"

# --- helpers --------------------------------------------------------------

# _linear N   table of the healthy lower device of scenario N
_linear()
{
	echo "0 $RSECT linear $DISK $(($1 * RSECT))"
}

# _flakey N FEATURES...   lower device of scenario N always down (up 0 s,
# down 1 s) with the given feature arguments
_flakey()
{
	local n=$1
	shift
	if [ $# -gt 0 ]; then
		echo "0 $RSECT flakey $DISK $((n * RSECT)) 0 1 $# $*"
	else
		echo "0 $RSECT flakey $DISK $((n * RSECT)) 0 1"
	fi
}

# _lower_set N TABLE   reload the lower device of scenario N (bounded: a
# suspend that never returns fails the test)
_lower_set()
{
	_wbg_wait 120 _wreload "$P$1lo" "$2"
	case $? in
	0) return 0 ;;
	124) _fail "reloading the lower device hangs" ;;
	*) return 1 ;;
	esac
}

# _ack N KIND OFF LEN [ARG]   record an acknowledged range of scenario N:
# KIND "data" (ARG = offset in $DATA) or "byte" (ARG = value)
_ack()
{
	echo "$3 $4 $2 $5" >>"$WORK/ack.$1"
}

# _ranges_equal FILE_OR_DEV RANGES   every range of RANGES reads back as
# recorded
_ranges_equal()
{
	python3 - "$1" "$2" "$DATA" <<'EOF'
import os, sys
dev, ranges, data = sys.argv[1:4]
bad = n = 0
with open(dev, 'rb') as a, open(data, 'rb') as d:
    for line in open(ranges):
        off, ln, kind, arg = line.split()
        off, ln, arg = int(off), int(ln), int(arg)
        a.seek(off)
        got = a.read(ln)
        if kind == 'data':
            d.seek(arg)
            want = d.read(ln)
        else:
            want = bytes([arg]) * ln
        n += 1
        if got != want:
            bad += 1
            if bad <= 5:
                print('# range %d+%d (%s %d) differs' % (off, ln, kind, arg))
print('# %d acknowledged ranges compared, %d differ' % (n, bad))
sys.exit(1 if bad else 0)
EOF
}

# _setup N   image of scenario N on its region, lower device, mapping
# ${P}N; QEMU writes 1 MiB of 0x5a, the target 4 MiB at 4 MiB plus one
# cluster in place over QEMU's, then fsync: all acknowledged.  Sets LO,
# DM, IMG (the file the image was built in).
_setup()
{
	local n=$1
	LO=/dev/mapper/$P${n}lo
	DM=$P$n
	IMG=$WORK/img$n.qcow2
	: >"$WORK/ack.$n"
	: >"$WORK/wl.$n"
	_mkimg "$IMG" $VS cluster_size=64k || return 1
	_qio "$IMG" "write -q -P 0x5a 0 $M" || return 1
	dd if="$IMG" of="$DISK" bs=64k oflag=direct,seek_bytes seek=$((n * REGION)) \
		conv=notrunc,fsync status=none || { _qdiag "copying the image to $DISK failed"; return 1; }
	_dm_create "$P${n}lo" "$(_linear "$n")" || return 1
	_dm_create "$DM" "$(_qcow2_table "$LO" $((VS / 512)))" ||
		{ _qdiag "mapping the image on $LO failed"; return 1; }
	MAP_DEV=/dev/mapper/$DM
	_ack "$n" byte 0 $((512 << 10)) $((0x5a))
	_ack "$n" byte $((576 << 10)) $((448 << 10)) $((0x5a))
	dd if="$DATA" of="$MAP_DEV" bs=64k count=1 seek=8 oflag=direct conv=fsync \
		status=none || { _qdiag "in-place write failed"; return 1; }
	_ack "$n" data $((512 << 10)) $CS 0
	dd if="$DATA" of="$MAP_DEV" bs=64k iflag=skip_bytes skip=$M count=64 \
		oflag=direct,seek_bytes seek=$((4 * M)) conv=fsync status=none ||
		{ _qdiag "allocating write failed"; return 1; }
	_ack "$n" data $((4 * M)) $((4 * M)) $M
	_check_wstatus "$DM" rw || return 1
}

# _wl_run N   the workload (run in the background): chunk after chunk,
# O_DIRECT + fsync; "i" in $WORK/wl.N after chunk i was acknowledged, "fail
# i" and exit 1 at the first error; stops at $WORK/wl.N.stop or WL_MAX.
_wl_run()
{
	local n=$1 i
	for ((i = 0; i < WL_MAX; i++)); do
		[ -e "$WORK/wl.$n.stop" ] && return 0
		if ! dd if="$DATA" of="$MAP_DEV" bs=64k iflag=skip_bytes \
			skip=$((8 * M + i * CS)) count=1 seek=$((WL_BASE / CS + i)) \
			oflag=direct conv=fsync status=none 2>>"$WORK/wl.$n.err"; then
			echo "fail $i" >>"$WORK/wl.$n"
			return 1
		fi
		echo "$i" >>"$WORK/wl.$n"
	done
	echo "end" >>"$WORK/wl.$n"
	return 0
}

# _wl_start N   start the workload; WL_PID
_wl_start()
{
	: >"$WORK/wl.$1"
	: >"$WORK/wl.$1.err"
	rm -f "$WORK/wl.$1.stop"
	_wl_run "$1" </dev/null >/dev/null 2>&1 &
	WL_PID=$!
}

# _wl_acked N   number of chunks acknowledged so far
_wl_acked()
{
	grep -c '^[0-9]' "$WORK/wl.$1" 2>/dev/null || true
}

# _wl_wait_acked N COUNT   wait (at most 300 s) until COUNT chunks are
# acknowledged or the workload ended
_wl_wait_acked()
{
	local i
	for ((i = 0; i < 600; i++)); do
		[ "$(_wl_acked "$1")" -ge "$2" ] && return 0
		kill -0 "$WL_PID" 2>/dev/null || return 1
		sleep 0.5
	done
	_qdiag "the workload did not get to $2 chunks in 300 s"
	return 1
}

# _wl_wait SECS   wait for the workload; its status, or fail the whole
# test if it still runs after SECS (the device hangs)
_wl_wait()
{
	local i
	for ((i = 0; i < $1 * 2; i++)); do
		kill -0 "$WL_PID" 2>/dev/null || break
		sleep 0.5
	done
	if kill -0 "$WL_PID" 2>/dev/null; then
		echo w >/proc/sysrq-trigger 2>/dev/null
		_fail "the workload still runs $1 s after the fault: hung? (sysrq-w in the kernel log)"
	fi
	wait "$WL_PID"
}

# _wl_ack N [MAXLINE]   add the chunks acknowledged by the workload (in the
# first MAXLINE lines of its log, default all) to the acknowledged ranges
_wl_ack()
{
	local i
	while read -r i; do
		case "$i" in
		'' | *[!0-9]*) continue ;;
		esac
		_ack "$1" data $((WL_BASE + i * CS)) $CS $((8 * M + i * CS))
	done < <(head -n "${2:-1000000}" "$WORK/wl.$1")
}

# _remove_mapping   dmsetup remove of the target, bounded
_remove_mapping()
{
	_wbg_wait 120 dmsetup remove --retry "$DM"
	case $? in
	0) _wsync_udev; return 0 ;;
	124) _fail "dmsetup remove $DM hangs" ;;
	*) _qdiag "dmsetup remove $DM failed"; return 1 ;;
	esac
}

# _qemu_acked IMG N   QEMU (qemu-img convert) reads every acknowledged range
# of scenario N from IMG
_qemu_acked()
{
	local rc=0
	if _wconvert "$1" "$WORK/out.raw"; then
		_ranges_equal "$WORK/out.raw" "$WORK/ack.$2" ||
			{ _qdiag "QEMU does not read back every acknowledged range"; rc=1; }
	else
		rc=1
	fi
	rm -f "$WORK/out.raw"
	return $rc
}

# _after N   the mapping is gone: restore the lower device and check the
# image (qemu-img check, header bits, QEMU's view of every acknowledged
# range, then the same through a new mapping)
_after()
{
	local n=$1 rc=0
	_lower_set "$n" "$(_linear "$n")" || return 1
	_wcheck "$LO" "0 3" || rc=1
	_wheader_clean "$LO" || rc=1
	_qemu_acked "$LO" "$n" || rc=1
	if _dm_create "$DM" "$(_qcow2_table "$LO" $((VS / 512)))"; then
		_ranges_equal "$MAP_DEV" "$WORK/ack.$n" ||
			{ _qdiag "a new mapping does not read back every acknowledged range"; rc=1; }
		_check_wstatus "$DM" rw || rc=1
		_remove_mapping || rc=1
		_wcheck "$LO" "0 3" || rc=1
	else
		_qdiag "the image does not map again"
		rc=1
	fi
	return $rc
}

# _fsync_status   fsync() on the device, bounded; its status
_fsync_status()
{
	_wbg_wait 120 sync "$MAP_DEV"
	local r=$?
	[ $r -ne 124 ] || _fail "a flush hangs"
	return $r
}

# _eio FILE   FILE has an "Input/output error"
_eio()
{
	grep -q 'Input/output error' "$1" && return 0
	_qdiag "no EIO in: $(tail -2 "$1" | tr '\n' ' ')"
	return 1
}

# _scen_done N RC1 RC2 RC3   count the scenario as passed if all passed
_scen_done()
{
	[ "$2" -eq 0 ] && [ "$3" -eq 0 ] && [ "$4" -eq 0 ] && SCEN_PASS=$((SCEN_PASS + 1))
	_qdiag "scenario $1: $(_wl_acked "$1") workload chunks acknowledged, $(wc -l <"$WORK/ack.$1") acknowledged ranges checked"
}

# _fault_setup_fail DESC   the three subtests of a scenario whose setup failed
_fault_setup_fail()
{
	_result "$1: fault" 1
	_result "$1: removal" 1
	_result "$1: after restore" 1
}

# _restored N R1 R2 R3 DESC2 DESC3   the end of scenario N, its lower device
# restored and the writes redone: the mapping reads every acknowledged
# range, stays rw and is removed (subtest DESC2, failed if R2 is not 0);
# the image on the lower device checks clean and QEMU reads the ranges
# (DESC3, failed if R3 is not 0); the scenario passes if R1 is 0 too.
_restored()
{
	local n=$1 r1=$2 r2=$3 r3=$4
	_ranges_equal "$MAP_DEV" "$WORK/ack.$n" || r2=1
	_check_wstatus "$DM" rw any || r2=1
	_remove_mapping || r2=1
	_result "$5" "$r2"
	_wcheck "$LO" || r3=1
	_qemu_acked "$LO" "$n" || r3=1
	_dm_remove "$P${n}lo" >/dev/null 2>&1
	_result "$6" "$r3"
	_scen_done "$n" "$r1" "$r2" "$r3"
}

# --- 1: failing writes ----------------------------------------------------
s1()
{
	local d="1 error_writes" r1=0 r2=0 r3=0 dirty
	_qmark
	_setup 1 || { _fault_setup_fail "$d"; return; }
	_wl_start 1
	_wl_wait_acked 1 3 || r1=1
	_lower_set 1 "$(_flakey 1 error_writes)" || r1=1
	_wl_wait 240 && { _qdiag "the workload did not fail"; r1=1; }
	_eio "$WORK/wl.1.err" || r1=1
	grep -q '^fail' "$WORK/wl.1" || r1=1
	_qdiag "workload: $(_wl_acked 1) chunks acknowledged, then $(grep '^fail' "$WORK/wl.1")"
	# an allocating write now must fail too
	if dd if="$DATA" of="$MAP_DEV" bs=64k count=2 seek=$((56 * M / CS)) oflag=direct \
		status=none 2>"$WORK/dd.err"; then
		_qdiag "an allocating write succeeded with all writes failing"
		r1=1
	fi
	if _wstatus "$DM"; then
		dirty=$WS_DIRTY
		_qdiag "status: $WS_LINE"
		if _fsync_status; then
			[ "$dirty" -eq 0 ] ||
				{ _qdiag "fsync succeeded with $dirty dirty slices and all writes failing"; r1=1; }
		else
			_qdiag "fsync failed"
			_fsync_status &&
				{ _qdiag "a second fsync succeeded after a failed one"; r1=1; }
		fi
		_wstatus "$DM" || r1=1
		_qdiag "status after fsync: $WS_LINE"
		case "$WS_MODE" in
		fail) _dmesg_expect 'switching to fail mode' || r1=1 ;;
		rw) [ "$dirty" -eq 0 ] || { _qdiag "mode rw after a failed commit"; r1=1; } ;;
		*) _qdiag "mode $WS_MODE"; r1=1 ;;
		esac
	else
		r1=1
	fi
	_check_dmesg_clean || r1=1
	_result "$d: writes fail with EIO, flush fails, mode ${WS_MODE:-?}" $r1
	_remove_mapping || r2=1
	_result "$d: the mapping is removed" $r2
	_wl_ack 1
	_after 1 || r3=1
	_result "$d: after restore the image is consistent, acknowledged data intact" $r3
	_scen_done 1 $r1 $r2 $r3
}

# --- 2: failing reads -----------------------------------------------------
s2()
{
	local d="2 failing reads" r1=0 r2=0 r3=0 how="error_reads"
	_qmark
	_setup 2 || { _fault_setup_fail "$d"; return; }
	# a new mapping: nothing of the image in the metadata cache
	_remove_mapping || r1=1
	_dm_create "$DM" "$(_qcow2_table "$LO" $((VS / 512)))" || r1=1
	if ! _lower_set 2 "$(_flakey 2 error_reads)" 2>/dev/null; then
		how="all I/O failing (no error_reads)"
		_lower_set 2 "$(_flakey 2)" || r1=1
	fi
	_qdiag "fault: dm-flakey down, $how"
	if _wbg_wait 120 dd if="$MAP_DEV" of=/dev/null bs=64k iflag=direct \
		skip=$((4 * M / CS)) count=64 status=none 2>"$WORK/dd.err"; then
		_qdiag "reading through the failing device succeeded"
		r1=1
	else
		[ $? -ne 124 ] || _fail "a read hangs"
	fi
	dd if="$MAP_DEV" of=/dev/null bs=64k iflag=direct count=2 status=none 2>"$WORK/dd.err" &&
		{ _qdiag "reading QEMU's clusters through the failing device succeeded"; r1=1; }
	_eio "$WORK/dd.err" || r1=1
	if _wstatus "$DM"; then
		_qdiag "status: $WS_LINE"
		[ "$WS_MODE" = rw ] || { _qdiag "mode $WS_MODE after read errors"; r1=1; }
	else
		r1=1
	fi
	_check_dmesg_clean || r1=1
	_result "$d: reads fail with EIO, mode stays rw" $r1
	_lower_set 2 "$(_linear 2)" || r2=1
	_ranges_equal "$MAP_DEV" "$WORK/ack.2" || r2=1
	_check_wstatus "$DM" rw any || r2=1
	_remove_mapping || r2=1
	_result "$d: after restore the same mapping reads the data; removed" $r2
	_after 2 || r3=1
	_result "$d: the image is consistent, acknowledged data intact" $r3
	_scen_done 2 $r1 $r2 $r3
}

# --- 3: dropped writes ----------------------------------------------------
s3()
{
	local d="3 drop_writes" r1=0 r2=0 r3=0 before
	_qmark
	_setup 3 || { _fault_setup_fail "$d"; return; }
	_wl_start 3
	_wl_wait_acked 3 3 || r1=1
	# every line now in the log was acknowledged before the switch
	before=$(wc -l <"$WORK/wl.3")
	_lower_set 3 "$(_flakey 3 drop_writes)" || r1=1
	_wl_wait_acked 3 $((before + 4)) ||
		_qdiag "the workload stopped during dropped writes: $(tail -1 "$WORK/wl.3")"
	touch "$WORK/wl.3.stop"
	_wl_wait 240
	_qdiag "workload: $before chunk(s) acknowledged before the switch, $(_wl_acked 3) in all"
	_wl_ack 3 "$before"
	# what was durable before the switch still reads back through the target
	_ranges_equal "$MAP_DEV" "$WORK/ack.3" || r1=1
	_wstatus "$DM" && _qdiag "status: $WS_LINE"
	_check_dmesg_clean || r1=1
	_result "$d: no error, no hang, data acknowledged before the switch reads back" $r1
	# removed while writes are still dropped: nothing after the switch lands
	_remove_mapping || r2=1
	_result "$d: the mapping is removed" $r2
	_after 3 || r3=1
	_result "$d: after restore the image is consistent, data acknowledged before the switch intact" $r3
	_scen_done 3 $r1 $r2 $r3
}

# --- 4: the device disappears ---------------------------------------------
s4()
{
	local d="4 device gone (dm-error)" r1=0 r2=0 r3=0
	_qmark
	_setup 4 || { _fault_setup_fail "$d"; return; }
	_wl_start 4
	_wl_wait_acked 4 3 || r1=1
	_lower_set 4 "0 $RSECT error" || r1=1
	_wl_wait 240 && { _qdiag "the workload did not fail"; r1=1; }
	_eio "$WORK/wl.4.err" || r1=1
	_qdiag "workload: $(_wl_acked 4) chunks acknowledged, then $(grep '^fail' "$WORK/wl.4")"
	if _wbg_wait 120 dd if="$MAP_DEV" of=/dev/null bs=64k iflag=direct \
		skip=$((4 * M / CS)) count=64 status=none; then
		_qdiag "reading from a vanished device succeeded"
		r1=1
	else
		[ $? -ne 124 ] || _fail "a read hangs"
	fi
	_fsync_status && _qdiag "fsync succeeded on a vanished device"
	if _wstatus "$DM"; then
		_qdiag "status: $WS_LINE"
		case "$WS_MODE" in
		rw | fail) ;;
		*) _qdiag "mode $WS_MODE"; r1=1 ;;
		esac
	else
		r1=1
	fi
	_check_dmesg_clean || r1=1
	_result "$d: I/O fails with EIO, no hang, mode ${WS_MODE:-?}" $r1
	_remove_mapping || r2=1
	_result "$d: the mapping is removed" $r2
	_wl_ack 4
	_after 4 || r3=1
	_result "$d: after restore the image is consistent, acknowledged data intact" $r3
	_scen_done 4 $r1 $r2 $r3
}

# --- 5: errors on metadata writes only ------------------------------------
# _meta_clusters IMG   host cluster numbers of the header, refcount table,
# refcount blocks, L1 table and L2 tables, one a line
_meta_clusters()
{
	python3 - "$1" <<'EOF'
import struct, sys
f = open(sys.argv[1], 'rb')
h = f.read(104)
cb, = struct.unpack('>I', h[20:24])
l1_size, l1_off, rt_off, rt_clusters = struct.unpack('>IQQI', h[36:60])
cs = 1 << cb
mask = ((1 << 56) - 1) & ~(cs - 1)
out = {0}
for i in range(rt_clusters):
    out.add(rt_off // cs + i)
f.seek(rt_off)
for e in struct.unpack('>%dQ' % (rt_clusters * cs // 8), f.read(rt_clusters * cs)):
    if e & mask:
        out.add((e & mask) // cs)
for i in range((l1_size * 8 + cs - 1) // cs):
    out.add(l1_off // cs + i)
f.seek(l1_off)
for e in struct.unpack('>%dQ' % l1_size, f.read(l1_size * 8)):
    if e & mask:
        out.add((e & mask) // cs)
for c in sorted(out):
    print(c)
EOF
}

s5()
{
	local d="5 metadata write errors" r1=0 r2=0 r3=0 c prev=-1 table="" start dirty
	local cl=$((CS / 512)) base=$((5 * RSECT)) nmeta=0
	_qmark
	_setup 5 || { _fault_setup_fail "$d"; return; }
	# one flakey segment per metadata cluster, linear elsewhere
	while read -r c; do
		start=$(((prev + 1) * cl))
		[ "$c" -gt $((prev + 1)) ] &&
			table+="$start $((c * cl - start)) linear $DISK $((base + start))"$'\n'
		table+="$((c * cl)) $cl flakey $DISK $((base + c * cl)) 0 1 1 error_writes"$'\n'
		prev=$c
		nmeta=$((nmeta + 1))
	done < <(_meta_clusters "$IMG")
	start=$(((prev + 1) * cl))
	table+="$start $((RSECT - start)) linear $DISK $((base + start))"
	_qdiag "metadata clusters failing writes: $(_meta_clusters "$IMG" | tr '\n' ' ')"
	[ "$nmeta" -ge 5 ] || { _qdiag "expected at least 5 metadata clusters, got $nmeta"; r1=1; }
	_lower_set 5 "$table" || r1=1
	# allocating writes: data lands, metadata stays dirty in memory
	dd if="$DATA" of="$MAP_DEV" bs=64k iflag=skip_bytes skip=$((20 * M)) count=16 \
		seek=$((WL_BASE / CS)) oflag=direct status=none 2>"$WORK/dd.err" ||
		_qdiag "the allocating write failed already: $(cat "$WORK/dd.err")"
	if _wstatus "$DM"; then
		dirty=$WS_DIRTY
		_qdiag "status before the flush: $WS_LINE"
		[ "$dirty" -gt 0 ] || { _qdiag "no dirty metadata: nothing to fail"; r1=1; }
	else
		r1=1
	fi
	if _fsync_status; then
		_qdiag "fsync succeeded although the metadata could not be written"
		r1=1
	fi
	if _wstatus "$DM"; then
		_qdiag "status after the flush: $WS_LINE"
		[ "$WS_MODE" = fail ] || { _qdiag "mode $WS_MODE, expected fail"; r1=1; }
	else
		r1=1
	fi
	_dmesg_expect 'switching to fail mode' || r1=1
	# what fail mode serves is not documented: reported, not asserted
	if dd if="$MAP_DEV" of=/dev/null bs=64k iflag=direct count=1 skip=64 \
		status=none 2>/dev/null; then
		_qdiag "fail mode: a read is served"
	else
		_qdiag "fail mode: a read is refused"
	fi
	if dd if="$DATA" of="$MAP_DEV" bs=64k count=1 seek=64 oflag=direct \
		status=none 2>/dev/null; then
		_qdiag "fail mode: an in-place write is served"
	else
		_qdiag "fail mode: an in-place write is refused"
	fi
	# the writes before the failed flush must never become acknowledged
	if _fsync_status; then
		_qdiag "a second fsync succeeded after the failed one"
		r1=1
	fi
	_check_dmesg_clean || r1=1
	_result "$d: the flush fails and fails again, mode fail" $r1
	_remove_mapping || r2=1
	_result "$d: the mapping is removed" $r2
	_after 5 || r3=1
	_result "$d: after restore the image is consistent, acknowledged data intact" $r3
	_scen_done 5 $r1 $r2 $r3
}

# --- 6: failing backing reads during copy-on-write ------------------------
# _w4k OCTAL BLOCK [DD_ARG...]   write 4 KiB of the byte \OCTAL at 4 KiB
# block BLOCK of $MAP_DEV, O_DIRECT
_w4k()
{
	local byte=$1 blk=$2
	shift 2
	dd if=/dev/zero bs=4k count=1 status=none | tr '\0' "\\$byte" |
		dd of="$MAP_DEV" bs=4k seek="$blk" oflag=direct status=none "$@"
}

s6()
{
	local d="6 failing backing reads (copy-on-write)" r1=0 r2=0 r3=0 c n=0 ma ma0 cp cp0
	local ovl=$WORK/ovl6.qcow2 odev
	_qmark
	LO=/dev/mapper/${P}6lo DM=${P}6 IMG=$WORK/img6.qcow2
	: >"$WORK/ack.6"
	if ! { _mkimg "$IMG" $VS cluster_size=64k && _qio "$IMG" "write -q -P 0x5a 0 4M" &&
		dd if="$IMG" of="$DISK" bs=64k oflag=direct,seek_bytes seek=$((6 * REGION)) \
			conv=notrunc,fsync status=none &&
		_dm_create "${P}6lo" "$(_linear 6)" &&
		qemu-img create -q -f qcow2 -o cluster_size=64k -b "$LO" -F qcow2 "$ovl" &&
		_wroom "$ovl" $VS && odev=$(_wimg_attach "$ovl") &&
		_dm_create "$DM" "$(_qcow2_table "$odev" $((VS / 512)) backing qcow2 "$LO")"; }; then
		_qdiag "cannot map the overlay"
		_fault_setup_fail "$d"
		return
	fi
	MAP_DEV=/dev/mapper/$DM
	# the backing data the writes leave: clusters 1 and 10.. whole, the
	# rest of clusters 0 and 2..9 around their 4 KiB at 4 KiB
	_ack 6 byte $CS $CS $((0x5a))
	_ack 6 byte $((10 * CS)) $((4 * M - 10 * CS)) $((0x5a))
	for c in 0 $(seq 2 9); do
		_ack 6 byte $((c * CS)) 4096 $((0x5a))
		_ack 6 byte $((c * CS + 8192)) $((CS - 8192)) $((0x5a))
	done
	_ack 6 byte 4096 4096 $((0x11))
	_w4k 021 1 conv=fsync || { _qdiag "the first write into the overlay failed"; r1=1; }
	ma0=$(_wstat "$DM" map_allocs) cp0=$(_wstat "$DM" copies)
	_lower_set 6 "0 $RSECT error" || r1=1
	for c in $(seq 2 9); do
		if _w4k 042 $((c * 16 + 1)) 2>>"$WORK/dd6.err"; then
			n=$((n + 1))
		fi
	done
	[ "$n" -eq 0 ] || { _qdiag "$n of 8 copy-on-write writes over a failing backing device succeeded"; r1=1; }
	_eio "$WORK/dd6.err" || r1=1
	ma=$(_wstat "$DM" map_allocs) cp=$(_wstat "$DM" copies)
	_qdiag "while the backing device failed: map_allocs +$((ma - ma0)), copies +$((cp - cp0))"
	if [ $((ma - ma0)) -lt 1 ] || [ $((cp - cp0)) -lt 1 ]; then
		_qdiag "no copy-on-write was tried in map()"
		r1=1
	fi
	_check_wstatus "$DM" rw any || r1=1
	_check_dmesg_clean || r1=1
	_result "$d: copy-on-write writes fail with EIO, mode stays rw" $r1
	_lower_set 6 "$(_linear 6)" || r2=1
	for c in $(seq 2 9); do
		_w4k 063 $((c * 16 + 1)) conv=fsync ||
			{ _qdiag "write into cluster $c failed after the restore"; r2=1; }
		_ack 6 byte $((c * CS + 4096)) 4096 $((0x33))
	done
	_ranges_equal "$MAP_DEV" "$WORK/ack.6" || r2=1
	_check_wstatus "$DM" rw any || r2=1
	_remove_mapping || r2=1
	_loop_detach "$odev"
	_result "$d: after restore the writes succeed; removed" $r2
	_wcheck "$ovl" || r3=1
	_qemu_acked "$ovl" 6 || r3=1
	rm -f "$ovl"
	_dm_remove "${P}6lo" >/dev/null 2>&1
	_result "$d: the overlay checks clean (no leak), QEMU reads the writes" $r3
	_scen_done 6 $r1 $r2 $r3
}

# --- 7: failing data writes of new clusters --------------------------------
s7()
{
	local d="7 failing data writes of new clusters" r1=0 r2=0 r3=0 i n=0 ma ma0 end es
	local base=$((7 * RSECT)) off=$((32 * M))
	_qmark
	_setup 7 || { _fault_setup_fail "$d"; return; }
	# the metadata is committed (the setup's writes were fsync()ed)
	end=$(_wimg_end "$LO") || end=""
	if [ -z "$end" ] || [ "$end" -ge $((VS / 2)) ]; then
		_qdiag "cannot get the image end offset ('$end')"
		r1=1
		end=$((VS / 2))
	fi
	es=$((end / 512))
	_lower_set 7 "0 $es linear $DISK $base
$es $((RSECT - es)) flakey $DISK $((base + es)) 0 1 1 error_writes" || r1=1
	ma0=$(_wstat "$DM" map_allocs)
	for i in 0 1 2 3; do
		if dd if="$DATA" of="$MAP_DEV" bs=$M count=1 skip="$i" seek=$((off / M + i)) \
			oflag=direct status=none 2>>"$WORK/dd7.err"; then
			n=$((n + 1))
		fi
	done
	[ "$n" -eq 0 ] || { _qdiag "$n of 4 writes into a failing data area succeeded"; r1=1; }
	_eio "$WORK/dd7.err" || r1=1
	ma=$(_wstat "$DM" map_allocs)
	_qdiag "image end $end; while data writes failed: map_allocs +$((ma - ma0))"
	[ $((ma - ma0)) -ge 16 ] || { _qdiag "no 1 MiB write was allocated in map()"; r1=1; }
	_check_wstatus "$DM" rw any || r1=1
	_check_dmesg_clean || r1=1
	_result "$d: 1 MiB allocating writes fail with EIO, mode stays rw" $r1
	_lower_set 7 "$(_linear 7)" || r2=1
	for i in 0 1 2 3; do
		dd if="$DATA" of="$MAP_DEV" bs=$M count=1 skip="$i" seek=$((off / M + i)) \
			oflag=direct conv=fsync status=none ||
			{ _qdiag "write $i failed after the restore"; r2=1; }
	done
	_ack 7 data "$off" $((4 * M)) 0
	_restored 7 $r1 $r2 $r3 "$d: after restore the writes succeed; removed" \
		"$d: the image checks clean (no leak), QEMU reads the writes"
}

# --- 8: failing data writes into subclusters (extended L2) ------------------
# the 16 writes of scenario 8: "guest-offset length data-offset" per line
_s8_writes()
{
	local k c
	for k in 0 1 2 3 4 5 6 7; do
		c=$((8 * M + k * CS))
		echo "$((c + (16 << 10))) 4096 $((k * 8192))"
		echo "$((c + (33 << 10))) 1024 $((k * 8192 + 4096))"
	done
}

# _s8_write_all   the 16 writes, O_DIRECT; prints how many failed
_s8_write_all()
{
	local off len src bad=0
	while read -r off len src; do
		dd if="$DATA" of="$MAP_DEV" bs="$len" count=1 iflag=skip_bytes skip="$src" \
			oflag=direct,seek_bytes seek="$off" status=none 2>>"$WORK/dd8.err" ||
			bad=$((bad + 1))
	done < <(_s8_writes)
	echo "$bad"
}

s8()
{
	local d="8 failing data writes into subclusters (extended L2)" r1=0 r2=0 r3=0
	local base=$((8 * RSECT)) k c lo hi bad mw mw0 df df0 ma ma0
	local -a qio=()
	_qmark
	LO=/dev/mapper/${P}8lo DM=${P}8 IMG=$WORK/img8.qcow2
	: >"$WORK/ack.8"
	: >"$WORK/wl.8"
	for k in 0 1 2 3 4 5 6 7; do
		qio+=("write -q -P 0x5a $((8 * M + k * CS)) 2k")
	done
	if ! _mkimg "$IMG" $VS cluster_size=64k,extended_l2=on || ! _qio "$IMG" "${qio[@]}"; then
		_fault_setup_fail "$d"
		return
	fi
	# the host clusters of the 8 guest clusters, contiguous
	read -r lo hi < <(qemu-img map -f qcow2 --output=json "$IMG" | python3 -c '
import json, sys
o = [e["offset"] for e in json.load(sys.stdin) if e["data"] and "offset" in e]
print(min(o), max(o)) if len(o) == 8 else print(0, 0)')
	if [ "${lo:-0}" -le 0 ] || [ $((hi - lo)) -ne $((7 * CS)) ]; then
		_qdiag "QEMU's 8 clusters are not contiguous: $lo..$hi"
		_fault_setup_fail "$d"
		return
	fi
	if ! dd if="$IMG" of="$DISK" bs=64k oflag=direct,seek_bytes seek=$((8 * REGION)) \
		conv=notrunc,fsync status=none || ! _dm_create "${P}8lo" "$(_linear 8)" ||
		! _dm_create "$DM" "$(_qcow2_table "$LO" $((VS / 512)))"; then
		_fault_setup_fail "$d"
		return
	fi
	MAP_DEV=/dev/mapper/$DM
	# reads bring the L2 slice into the cache (a write in map() needs it)
	dd if="$MAP_DEV" of=/dev/null bs=512k count=1 skip=16 iflag=direct status=none
	lo=$((lo / 512)) hi=$((hi / 512 + CS / 512))
	_lower_set 8 "0 $lo linear $DISK $base
$lo $((hi - lo)) flakey $DISK $((base + lo)) 0 1 1 error_writes
$hi $((RSECT - hi)) linear $DISK $((base + hi))" || r1=1
	mw0=$(_wstat "$DM" map_writes) df0=$(_wstat "$DM" deferred) ma0=$(_wstat "$DM" map_allocs)
	bad=$(_s8_write_all)
	[ "$bad" -eq 16 ] || { _qdiag "$((16 - bad)) of 16 writes into failing clusters succeeded"; r1=1; }
	_eio "$WORK/dd8.err" || r1=1
	mw=$(_wstat "$DM" map_writes) df=$(_wstat "$DM" deferred)
	_qdiag "while data writes failed: map_writes +$((mw - mw0)), deferred +$((df - df0))"
	[ $((mw - mw0)) -ge 1 ] || { _qdiag "no write into a subcluster was done in map()"; r1=1; }
	_check_wstatus "$DM" rw any || r1=1
	_check_dmesg_clean || r1=1
	_result "$d: subcluster writes fail with EIO, mode stays rw" $r1
	_lower_set 8 "$(_linear 8)" || r2=1
	mw0=$(_wstat "$DM" map_writes)
	bad=$(_s8_write_all)
	[ "$bad" -eq 0 ] || { _qdiag "$bad writes failed after the restore"; r2=1; }
	mw=$(_wstat "$DM" map_writes) ma=$(_wstat "$DM" map_allocs)
	_qdiag "after the restore: map_writes +$((mw - mw0)), map_allocs +$((ma - ma0))"
	if [ $((mw - mw0)) -ne 16 ] || [ "$ma" -ne "$ma0" ]; then
		_qdiag "wanted all 16 writes in map(), without allocating"
		r2=1
	fi
	sync "$MAP_DEV" 2>/dev/null || blockdev --flushbufs "$MAP_DEV"
	for k in 0 1 2 3 4 5 6 7; do
		c=$((8 * M + k * CS))
		_ack 8 byte "$c" 2048 $((0x5a))
		_ack 8 byte $((c + 2048)) $((14 << 10)) 0
		_ack 8 byte $((c + (20 << 10))) $((13 << 10)) 0
		_ack 8 byte $((c + (34 << 10))) $((30 << 10)) 0
	done
	while read -r c k bad; do
		_ack 8 data "$c" "$k" "$bad"
	done < <(_s8_writes)
	_restored 8 $r1 $r2 $r3 "$d: after restore the writes succeed in map(); removed" \
		"$d: the image checks clean, QEMU reads the writes"
}

NRUN=0
for ((i = 1; i <= NSCEN; i++)); do
	_shard_mine "$i" || continue
	"s$i"
	NRUN=$((NRUN + 1))
done

rc=0
# the whole run's kernel log, from the mark test_common.sh set at the start
_DMESG_MARK=$MARK0 _DMESG_MARK_LINES=$MARK0_LINES
_check_dmesg_clean || rc=1
_result "no kernel warnings in the whole run" $rc
echo "# fault scenarios: $NRUN run, $SCEN_PASS passed"
ktap_finish
