# SPDX-License-Identifier: GPL-2.0
# shellcheck shell=bash disable=SC2034 # variables for the tests sourcing it
#
# test_common.sh - helpers shared by the dm-qcow2 selftests.
#
# Every test starts with
#
#	. "$(dirname "$0")/test_common.sh"
#
# and then checks its requirements (_require_*: they exit with KSFT_SKIP),
# prints KTAP (ktap_*) and leaves everything it creates to the exit trap set
# here: dm devices made with _dm_create, loop devices from _loop_attach,
# directories from _scratch_dir and commands given to _on_exit, undone in
# reverse order.  The registry lives in a file, so these helpers also work
# inside $(...):  dev=$(_loop_attach "$img")  dir=$(_scratch_dir).
# Tests must not set their own EXIT/INT/TERM traps; use _on_exit.
#
# Requirement helpers that cannot skip from inside $(...) (the exit would only
# leave the subshell) return KSFT_SKIP instead; use them as
#
#	disk=$(_disk 1) || exit
#
# Environment:
#   QCOW2_DISKS        spare block devices the tests may overwrite, space
#                      separated (set by tools/testing/vm/run-vm.sh --disk).
#                      Never point it at a disk holding data.
#   DM_QCOW2_MODULE    module name for _require_module (default dm-qcow2)
#   QCOW2_KEEP=1       keep the scratch directories (dm and loop devices are
#                      still removed)
#   QCOW2_SHARD=K/N    suites with case lists run only cases K, K+N, ...
#                      (_shard_mine; make check gives each kernel one shard)
#
# This file does not change shell options of the test (no set -e/-u), but is
# safe under set -u.

KSFT_PASS=0
KSFT_FAIL=1
KSFT_XFAIL=2
KSFT_XPASS=3
KSFT_SKIP=4

DM_QCOW2_MODULE=${DM_QCOW2_MODULE:-dm-qcow2}
DM_QCOW2_TARGET=qcow2

# Kernel log lines that fail a test.  Keep in sync with
# tools/testing/vm/run-vm.sh (KERNEL_REPORT_RE).
_KERNEL_REPORT_RE='Oops|BUG:|WARNING:|possible circular locking|possible recursive locking|inconsistent lock state|INFO: trying to register non-static key|suspicious RCU usage|KASAN|UBSAN|unreferenced object|blocked for more than|Kernel panic|general protection fault|Call Trace:'

_TEST_NAME=${0##*/}
_TEST_DIR=$(cd "$(dirname "$0")" && pwd)
_STATE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/dm-qcow2-${_TEST_NAME%.sh}.XXXXXX") || {
	echo "# FAIL: cannot create a scratch directory"
	exit "${KSFT_FAIL}"
}
_CLEANUP_LIST=${_STATE_DIR}/cleanup
: >"${_CLEANUP_LIST}"

# ---------------------------------------------------------------------------
# Exit codes and diagnostics

# _diag MSG...: KTAP diagnostic lines ("# MSG"), one per line of MSG.
_diag()
{
	local line

	printf '%s\n' "$@" | while IFS= read -r line; do
		echo "# ${line}"
	done
}

# _skip REASON: skip the whole test.
_skip()
{
	echo "# SKIP: $*"
	exit "${KSFT_SKIP}"
}

# _fail REASON: fail the whole test now.
_fail()
{
	echo "# FAIL: $*"
	exit "${KSFT_FAIL}"
}

# ---------------------------------------------------------------------------
# Cleanup

_cleanup_register()
{
	printf '%s\n' "$*" >>"${_CLEANUP_LIST}"
}

# _on_exit CMD [ARGS...]: run CMD at exit (in reverse registration order,
# interleaved with the dm/loop cleanup).
_on_exit()
{
	local q

	q=$(printf '%q ' "$@")
	_cleanup_register "cmd ${q}"
}

_cleanup_one()
{
	local kind=$1 arg=$2 back

	case "${kind}" in
	dm)
		dmsetup info "${arg}" >/dev/null 2>&1 || return 0
		dmsetup remove --retry "${arg}" >/dev/null 2>&1 ||
			echo "# cleanup: cannot remove dm device ${arg}"
		;;
	loop)
		# "loop DEV FILE": detach only if still attached to FILE.
		back=$(losetup --noheadings --output BACK-FILE "${arg%% *}" 2>/dev/null)
		[ "${back}" = "${arg#* }" ] || [ "${back}" = "${arg#* } (deleted)" ] || return 0
		losetup --detach "${arg%% *}" 2>/dev/null ||
			echo "# cleanup: cannot detach ${arg%% *}"
		;;
	cmd)
		eval "${arg}" || echo "# cleanup: '${arg}' failed"
		;;
	esac
}

_cleanup_all()
{
	local kind arg

	if [ -s "${_CLEANUP_LIST}" ]; then
		while read -r kind arg; do
			_cleanup_one "${kind}" "${arg}"
		done < <(tac "${_CLEANUP_LIST}")
	fi
	: >"${_CLEANUP_LIST}"
	if [ "${QCOW2_KEEP:-0}" = 1 ]; then
		echo "# keeping ${_STATE_DIR}"
	else
		rm -rf "${_STATE_DIR}"
	fi
}

_exit_trap()
{
	local rc=$?

	trap - EXIT
	# Only the test's own shell cleans up, not a subshell that exits.
	if [ "${BASHPID}" = "$$" ]; then
		_cleanup_all
	fi
	exit "${rc}"
}

trap _exit_trap EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------
# Requirements (exit with KSFT_SKIP)

_require_root()
{
	[ "${EUID}" -eq 0 ] || _skip "must be run as root"
}

# _require_cmd CMD...: skip unless every CMD is in PATH.
_require_cmd()
{
	local c missing=()

	for c in "$@"; do
		command -v "${c}" >/dev/null 2>&1 || missing+=("${c}")
	done
	[ ${#missing[@]} -eq 0 ] || _skip "missing command(s): ${missing[*]}"
}

_dm_target_registered()
{
	dmsetup targets 2>/dev/null | grep -q "^$1 "
}

# _require_module: load dm-qcow2 (modprobe) or skip.  A module that loads but
# registers no "qcow2" target fails the test.
_require_module()
{
	_require_cmd dmsetup modprobe
	if ! modprobe -q "${DM_QCOW2_MODULE}" 2>/dev/null &&
	   ! _dm_target_registered "${DM_QCOW2_TARGET}"; then
		_skip "module ${DM_QCOW2_MODULE} not available"
	fi
	_dm_target_registered "${DM_QCOW2_TARGET}" ||
		_fail "${DM_QCOW2_MODULE} loaded but 'dmsetup targets' has no ${DM_QCOW2_TARGET}"
}

# _have_dm_target NAME: whether the stock target NAME (linear, flakey, ...)
# is available, loaded with modprobe dm-NAME if needed (for one case that
# skips itself without it).
_have_dm_target()
{
	_dm_target_registered "$1" && return 0
	modprobe -q "dm-$1" 2>/dev/null
	_dm_target_registered "$1"
}

# _require_dm_target NAME: the same, or skip the whole test.
_require_dm_target()
{
	_require_cmd dmsetup
	_have_dm_target "$1" || _skip "device-mapper target $1 not available"
}

# _disk N: print the Nth (from 1) spare disk of $QCOW2_DISKS; if there is
# none, print the skip reason on stderr and return KSFT_SKIP:
#	disk=$(_disk 1) || exit
_disk()
{
	local n=$1 disks

	read -r -a disks <<<"${QCOW2_DISKS:-}"
	if [ "${n}" -lt 1 ] || [ "${n}" -gt "${#disks[@]}" ]; then
		echo "# SKIP: needs ${n} spare disk(s) in QCOW2_DISKS (run-vm.sh --disk SIZE)" >&2
		return "${KSFT_SKIP}"
	fi
	if [ ! -b "${disks[n - 1]}" ]; then
		echo "# SKIP: ${disks[n - 1]} (QCOW2_DISKS) is not a block device" >&2
		return "${KSFT_SKIP}"
	fi
	echo "${disks[n - 1]}"
}

# ---------------------------------------------------------------------------
# Scratch space, loop and dm devices (all undone at exit)

# _scratch_dir: print a new empty directory under /tmp, removed at exit.
_scratch_dir()
{
	mktemp -d "${_STATE_DIR}/scratch.XXXXXX"
}

# _loop_attach FILE [losetup options...]: attach FILE to a free loop device
# with direct I/O and print the device.  Where the file system cannot do
# O_DIRECT (tmpfs on older kernels) it falls back to buffered I/O, with a
# diagnostic on stderr.  A file whose size is not a multiple of 512 loses its
# tail (losetup warns); pad it first if that matters (truncate -s %512).
_loop_attach()
{
	local file=$1 dev err=${_STATE_DIR}/losetup.err.${BASHPID}

	shift
	file=$(realpath "${file}") || return 1
	if ! dev=$(losetup --find --show --direct-io=on "$@" "${file}" 2>"${err}"); then
		if ! dev=$(losetup --find --show "$@" "${file}" 2>"${err}"); then
			echo "# losetup ${file} failed: $(cat "${err}")" >&2
			rm -f "${err}"
			return 1
		fi
	fi
	_cleanup_register "loop ${dev} ${file}"
	grep -v -i 'direct io' "${err}" | sed 's/^/# /' >&2
	rm -f "${err}"
	if [ "$(losetup --noheadings --output DIO "${dev}" 2>/dev/null | tr -d ' ')" != 1 ]; then
		echo "# ${dev}: no direct I/O for ${file} (buffered I/O)" >&2
	fi
	echo "${dev}"
}

# _loop_detach DEV: detach now (the exit cleanup then skips it).
_loop_detach()
{
	losetup --detach "$1"
}

# _dm_create NAME TABLE [ro]: dmsetup create (--readonly with "ro"), wait
# for udev and make sure /dev/mapper/NAME exists.  Returns dmsetup's status;
# its error output is left on stderr.
_dm_create()
{
	local name=$1 table=$2 ro=${3:-} args=()

	[ "${ro}" = ro ] && args+=(--readonly)
	dmsetup create "${name}" "${args[@]}" --table "${table}" || return
	_cleanup_register "dm ${name}"
	command -v udevadm >/dev/null 2>&1 && udevadm settle 2>/dev/null
	[ -b "/dev/mapper/${name}" ] || dmsetup mknodes "${name}" 2>/dev/null
	return 0
}

# _dm_remove NAME: remove now (the exit cleanup then skips it).
_dm_remove()
{
	dmsetup remove --retry "$1"
}

# ---------------------------------------------------------------------------
# Kernel log

_DMESG_MARK=""
_DMESG_MARK_LINES=0
_DMESG_MARK_SEQ=0

# _dmesg_mark: start a new section of the kernel log.  A unique line is
# written to /dev/kmsg; when that is not possible (not root) the current
# number of lines is remembered instead.
_dmesg_mark()
{
	_DMESG_MARK_SEQ=$((_DMESG_MARK_SEQ + 1))
	_DMESG_MARK="dm-qcow2-selftest: ${_TEST_NAME} mark $$.${_DMESG_MARK_SEQ}.${RANDOM}${RANDOM}"
	_DMESG_MARK_LINES=$(dmesg 2>/dev/null | wc -l)
	echo "<5>${_DMESG_MARK}" 2>/dev/null >/dev/kmsg || _DMESG_MARK=""
}

# _dmesg_since_mark: print the kernel log after the last _dmesg_mark.
_dmesg_since_mark()
{
	dmesg 2>/dev/null | awk -v m="${_DMESG_MARK}" -v n="${_DMESG_MARK_LINES}" '
		{ line[NR] = $0 }
		m != "" && index($0, m) { start = NR }
		END {
			if (!start)
				start = n
			for (i = start + 1; i <= NR; i++)
				print line[i]
		}'
}

# _dmesg_expect [-i] ERE: succeed if a kernel log line since the mark
# matches ERE (-i: ignoring case); otherwise print the log since the mark as
# diagnostics and fail.
_dmesg_expect()
{
	local flags=-E log

	if [ "$1" = -i ]; then
		flags=-Ei
		shift
	fi
	log=$(_dmesg_since_mark)
	grep -q ${flags} -- "$1" <<<"${log}" && return 0
	echo "# no kernel log line matching '$1' since the mark; log since the mark:"
	tail -n 20 <<<"${log}" | sed 's/^/#   /'
	return 1
}

# _check_dmesg_clean: fail (return 1) and print the lines if the kernel log
# since the mark has an oops, BUG, WARNING, lockdep/KASAN/UBSAN/kmemleak,
# hung-task, panic, GPF or call trace report.
_check_dmesg_clean()
{
	local reports

	reports=$(_dmesg_since_mark | grep -E -- "${_KERNEL_REPORT_RE}")
	[ -z "${reports}" ] && return 0
	printf '# kernel report: %s\n' "${reports}"
	return 1
}

# ---------------------------------------------------------------------------
# KTAP output for tests with several subtests, after
# tools/testing/selftests/kselftest/ktap_helpers.sh:
#
#	ktap_header; ktap_plan 3
#	... && ktap_ok "desc" || ktap_fail "desc"
#	ktap_skip "desc" "reason"
#	ktap_finish		# exits 1 on any failure, 4 if all skipped, else 0

_KTAP_NUM=0
_KTAP_PLAN=""
_KTAP_PASS=0
_KTAP_FAIL=0
_KTAP_SKIP=0

# _shard_mine CASE   true if case number CASE (1-based) is this run's.
# `make check` over several kernels gives each kernel's VM one shard of the
# long, independent case lists (test_read_matrix, test_read_corrupt,
# test_write_diff, test_write_faults, test_qcow2setup, ...): every case runs
# on one of the kernels, every suite on all of them.  Unset or malformed:
# every case is mine.
_shard_mine()
{
	local k=${QCOW2_SHARD%%/*} n=${QCOW2_SHARD##*/}

	[[ "${QCOW2_SHARD:-}" =~ ^[0-9]+/[0-9]+$ ]] && [ "$n" -gt 1 ] || return 0
	[ $((($1 - 1) % n)) -eq $((k - 1)) ]
}

# _shard_count TOTAL   how many of the cases 1..TOTAL are this run's
_shard_count()
{
	local i c=0

	for ((i = 1; i <= $1; i++)); do
		_shard_mine "$i" && c=$((c + 1))
	done
	echo "$c"
}

# _pos_of KEY ITEM...   the position (1-based) of KEY among the ITEMs; fails
# if absent.  For "which case is this", pass the cases' keys, e.g.
# _pos_of "$fn" "${CASES[@]##*:}"
_pos_of()
{
	local key=$1 i=0 item

	shift
	for item in "$@"; do
		i=$((i + 1))
		[ "$item" = "$key" ] && { echo "$i"; return 0; }
	done
	return 1
}

ktap_header()
{
	echo "TAP version 13"
}

ktap_plan()
{
	_KTAP_PLAN=$1
	echo "1..$1"
}

ktap_print_msg()
{
	_diag "$@"
}

ktap_ok()
{
	_KTAP_NUM=$((_KTAP_NUM + 1))
	_KTAP_PASS=$((_KTAP_PASS + 1))
	echo "ok ${_KTAP_NUM} $*"
}

ktap_fail()
{
	_KTAP_NUM=$((_KTAP_NUM + 1))
	_KTAP_FAIL=$((_KTAP_FAIL + 1))
	echo "not ok ${_KTAP_NUM} $*"
}

# ktap_skip DESC REASON
ktap_skip()
{
	_KTAP_NUM=$((_KTAP_NUM + 1))
	_KTAP_SKIP=$((_KTAP_SKIP + 1))
	echo "ok ${_KTAP_NUM} $1 # SKIP ${2:-}"
}

# ktap_result RC DESC: ok if RC is 0, else not ok.
ktap_result()
{
	if [ "$1" -eq 0 ]; then
		ktap_ok "$2"
	else
		ktap_fail "$2"
	fi
}

# ktap_run_subtests NAME T...: run the subtest functions T in order, one
# KTAP result each ("NAME: T" without its t_ prefix), with its time as a
# diagnostic.  Optional hooks, defined by the test:
#   subtest_skip T      prints a reason and succeeds when T must be skipped
#   subtest_done T RC   runs after T (e.g. cleanup after a failure)
#   subtest_gate T RC   fails when the subtests after T cannot run
ktap_run_subtests()
{
	local name=$1 t desc why r t1 blocked=""

	shift
	for t in "$@"; do
		desc="$name: ${t#t_}"
		if [ -n "$blocked" ]; then
			ktap_skip "$desc" "$blocked"
			continue
		fi
		if declare -F subtest_skip >/dev/null && why=$(subtest_skip "$t"); then
			ktap_skip "$desc" "$why"
			continue
		fi
		t1=$SECONDS
		"$t"
		r=$?
		if declare -F subtest_done >/dev/null; then
			subtest_done "$t" "$r"
		fi
		_diag "${t#t_}: $((SECONDS - t1)) s"
		ktap_result "$r" "$desc"
		if declare -F subtest_gate >/dev/null && ! subtest_gate "$t" "$r"; then
			blocked="an earlier step failed"
		fi
	done
}

ktap_finish()
{
	local rc

	if [ -n "${_KTAP_PLAN}" ] && [ "${_KTAP_PLAN}" -ne "${_KTAP_NUM}" ]; then
		echo "# planned ${_KTAP_PLAN} tests but ran ${_KTAP_NUM}"
		_KTAP_FAIL=$((_KTAP_FAIL + 1))
	fi
	echo "# Totals: pass:${_KTAP_PASS} fail:${_KTAP_FAIL} xfail:0 xpass:0 skip:${_KTAP_SKIP} error:0"
	if [ "${_KTAP_FAIL}" -gt 0 ]; then
		rc=${KSFT_FAIL}
	elif [ "${_KTAP_PASS}" -eq 0 ] && [ "${_KTAP_SKIP}" -gt 0 ]; then
		rc=${KSFT_SKIP}
	else
		rc=${KSFT_PASS}
	fi
	exit "${rc}"
}

# Start the test's section of the kernel log (quietly fails when not root).
_dmesg_mark
