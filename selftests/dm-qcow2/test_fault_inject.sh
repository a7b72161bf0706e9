#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_fault_inject.sh - the kernel's fault injection under a writable
# qcow2 mapping (kernels with CONFIG_FAIL_MAKE_REQUEST, CONFIG_FAILSLAB and
# CONFIG_FAULT_INJECTION_DEBUG_FS, such as the `make check-debug` kernel;
# skipped elsewhere).
#
# Each scenario maps a 64 MiB image (64 KiB clusters, 1 MiB written by QEMU)
# on a loop device and runs a short workload through the target: 48 chunks of
# 64 KiB written with O_DIRECT + fsync (half of them allocating, half in
# place), then read back with O_DIRECT.  Errors of the workload are expected
# and only counted.
#
#  1. fail_make_request on the image's loop device (make-it-fail): a random
#     part of the target's I/O to the image fails at submission.
#  2. failslab for the workload's dd processes only (task-filter; each dd
#     runs in a subshell that sets its own make-it-fail and execs dd, so the
#     test's shell never fails to fork): slab allocations made in their
#     context (exec, the I/O submission path down to the target's map) fail
#     at random (1 %), sleeping allocations included.  The dd is a copy of
#     the static busybox in the scratch directory (tmpfs): failed
#     allocations while executing a binary from the host root over 9p leave
#     the guest's 9p client unable to exec anything.
#
# After the workload the fault is switched off, and per scenario:
#   - faults were really injected (the "times" budget went down);
#   - `dmsetup status` parses and the mode is rw or fail (never ro);
#   - the mapping is removed (within 120 s);
#   - `qemu-img check` finds no corruption (exit 0, or 3 for leaked
#     clusters, which failed allocating writes may leave).
# Finally the kernel log since the start has no report (oops, BUG, WARNING,
# lockdep, KASAN, kmemleak, hung task...).  The fault injection prints
# nothing itself (verbose 0): its stack dumps would be taken for reports.

. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/qcow2_common.sh"
. "$(dirname "$0")/qcow2_write_common.sh"

_qcow2_init dd sync busybox
_gen_only && _skip "GEN_ONLY: this test has no image-only part"
FMR=/sys/kernel/debug/fail_make_request
FSL=/sys/kernel/debug/failslab
[ -d "$FMR" ] || _skip "no $FMR (kernel without CONFIG_FAIL_MAKE_REQUEST and CONFIG_FAULT_INJECTION_DEBUG_FS)"
[ -d "$FSL" ] || _skip "no $FSL (kernel without CONFIG_FAILSLAB)"
[ -w /proc/self/make-it-fail ] || _skip "no /proc/self/make-it-fail"

MARK0=$_DMESG_MARK
MARK0_LINES=$_DMESG_MARK_LINES
M=$((1 << 20))
VS=$((64 * M))
NCHUNK=48
TIMES=1000
P=${QCOW2_DM_PREFIX}i
DATA=$WORK/data

ktap_header
ktap_plan 9

dd if=/dev/urandom of="$DATA" bs=64k count=$NCHUNK status=none || _fail "cannot make test data"
cp "$(command -v busybox)" "$WORK/busybox" || _fail "cannot copy busybox"

# _fa_set DIR PROBABILITY TIMES [KEY=VALUE...]   configure a fault attribute
_fa_set()
{
	local d=$1 prob=$2 kv
	echo 0 >"$d/probability" || return 1
	echo 1 >"$d/interval" && echo "$3" >"$d/times" && echo 0 >"$d/space" &&
		echo 0 >"$d/verbose" || return 1
	shift 3
	for kv in "$@"; do
		echo "${kv#*=}" >"$d/${kv%%=*}" || return 1
	done
	echo "$prob" >"$d/probability"
}

_fa_off()
{
	echo 0 >"$1/probability"
	echo 1 >"$1/times"
}

# shellcheck disable=SC2317 # run at exit
_faults_off()
{
	_fa_off "$FMR"
	_fa_off "$FSL"
	echo N >"$FSL/task-filter" 2>/dev/null
	echo Y >"$FSL/ignore-gfp-wait" 2>/dev/null
}
_on_exit _faults_off

# _dd ARGS...   dd, in the failslab scenario with make-it-fail set
_dd()
{
	if [ "$IN_FAILSLAB" = 1 ]; then
		(echo 1 >/proc/self/make-it-fail && exec "$WORK/busybox" dd "$@")
	else
		dd "$@"
	fi
}
IN_FAILSLAB=0

# _workload   the chunk writes (chunk i at 8 MiB + i * 64 KiB for even i,
# unallocated; within QEMU's first MiB for odd i, in place), then the
# reads; prints "W_OK W_ERR R_OK R_ERR"
_workload()
{
	local i wok=0 werr=0 rok=0 rerr=0 seek
	for ((i = 0; i < NCHUNK; i++)); do
		if ((i % 2)); then
			seek=$((i % 16))
		else
			seek=$((128 + i))
		fi
		if _dd if="$DATA" of="$MAP_DEV" bs=64k count=1 skip=$i seek=$seek \
			oflag=direct conv=fsync status=none 2>/dev/null; then
			wok=$((wok + 1))
		else
			werr=$((werr + 1))
		fi
	done
	for ((i = 0; i < NCHUNK; i += 4)); do
		if _dd if="$MAP_DEV" of=/dev/null bs=64k count=1 skip=$((128 + i)) \
			iflag=direct status=none 2>/dev/null; then
			rok=$((rok + 1))
		else
			rerr=$((rerr + 1))
		fi
	done
	echo "$wok $werr $rok $rerr"
}

# _scenario N NAME   map image N, run the workload with the fault of
# scenario NAME, switch it off and check (4 subtests)
_scenario()
{
	local n=$1 name=$2 img=$WORK/img$1.qcow2 dm=$P$1 loopdev res left rc
	local -a r

	if ! { _mkimg "$img" $VS cluster_size=64k &&
		_qio "$img" "write -q -P 0x5a 0 $M" &&
		_wroom "$img" $VS && _wmap "$dm" "$img"; }; then
		_fail "$name: cannot map the image"
	fi
	loopdev=${MAP_IMGDEV##*/}

	case "$name" in
	fail_make_request)
		_fa_set "$FMR" 10 $TIMES || _fail "cannot configure $FMR"
		echo 1 >"/sys/block/$loopdev/make-it-fail" || _fail "cannot set make-it-fail on $loopdev"
		res=$(_workload)
		echo 0 >"/sys/block/$loopdev/make-it-fail"
		left=$(cat "$FMR/times")
		_fa_off "$FMR"
		;;
	failslab)
		_fa_set "$FSL" 1 200 task-filter=Y ignore-gfp-wait=N ||
			_fail "cannot configure $FSL"
		IN_FAILSLAB=1
		res=$(_workload)
		IN_FAILSLAB=0
		left=$(cat "$FSL/times")
		left=$((left + TIMES - 200))
		_fa_off "$FSL"
		echo N >"$FSL/task-filter"
		echo Y >"$FSL/ignore-gfp-wait"
		;;
	esac
	read -r -a r <<<"$res"
	_qdiag "$name: writes ok ${r[0]:-?} failed ${r[1]:-?}, reads ok ${r[2]:-?} failed ${r[3]:-?}," \
		"faults injected $((TIMES - left))"
	[ "$left" -lt $TIMES ]
	_result "$name: faults injected" $?

	rc=0
	_wstatus "$dm" || rc=1
	if [ $rc -eq 0 ]; then
		_qdiag "$name: status $WS_LINE"
		[ "$WS_MODE" != ro ] || { _qdiag "mode ro after the faults"; rc=1; }
	fi
	_result "$name: status parses, mode rw or fail" $rc

	rc=0
	_wbg_wait 120 _dm_remove "$dm" || rc=1
	_wunmap "$dm"
	_result "$name: mapping removed" $rc

	_wcheck "$img" "0 3"
	_result "$name: qemu-img check: no corruption" $?
	rm -f "$img"
}

_scenario 1 fail_make_request
_scenario 2 failslab

_DMESG_MARK=$MARK0
_DMESG_MARK_LINES=$MARK0_LINES
_dmesg_clean_result "kernel log clean"
ktap_finish
