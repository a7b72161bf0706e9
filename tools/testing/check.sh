#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# check.sh KVER...: everything `make check` runs, with one closing line
# "N passed, N failed, N skipped" summing all parts.
set -u

top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top" || exit 1
# shellcheck source=tools/testing/counts.sh
. tools/testing/counts.sh
start=$(date +%s)

# A short record of each run (part headers, times, result lines that are not
# "ok", counts) stays on the machine, the last 20 runs: CI keeps its log only
# when it fails, and a passing run's times are worth knowing too.
# CHECK_RECORD_DIR= (empty) keeps none.
record_dir=${CHECK_RECORD_DIR-${XDG_CACHE_HOME:-$HOME/.cache}/dm-qcow2/check-runs}
record=/dev/null
if [ -n "$record_dir" ] && mkdir -p "$record_dir"; then
	# The PID: two runs started in the same second keep a record each.
	record=$record_dir/$(date -u +%Y%m%dT%H%M%S)-$(git rev-parse --short HEAD 2>/dev/null || echo none)-$$.txt
	echo "# make check of $(git log -1 --format='%h %s' 2>/dev/null) at $(date -u +%FT%TZ), kernels: $*" > "$record"
	find "$record_dir" -name '*.txt' | sort | head -n -20 | xargs -r rm -f
fi

# say LINE: print LINE and keep it in the record
say() {
	echo "$1" | tee -a "$record"
}

run_part() {
	local name=$1 log line rc t0 again failed_before=$fail
	shift
	t0=$(date +%s)
	say "## $name (make check at $((t0 - start)) s)"
	log=$(mktemp)
	"$@" 2>&1 | tee "$log"
	rc=${PIPESTATUS[0]}
	line=$(summary_line "$log")
	grep -E '^(not ok|ok .*# SKIP|# ==== kernel|# [^ ]+: exit [0-9]+ after|run-vm: boot-time kernel report)' "$log" >> "$record"
	# run-vm.sh boots a guest again after a kernel report that came before
	# the module was loaded (an emulator flake); count them where CI shows it.
	again=$(grep -c '^run-vm: booting again' "$log")
	[ "$again" = 0 ] || say "# $name: $again guest(s) booted again after a boot-time kernel report"
	rm -f "$log"
	add_counts "$line"
	if [ "$rc" != 0 ] && [ "$fail" = "$failed_before" ]; then
		say "not ok - $name exited with status $rc"
		fail=$((fail + 1))
	fi
	echo "   $(($(date +%s) - t0)) s, status $rc: ${line:-no summary line}" >> "$record"
}

if [ $# = 0 ]; then
	echo "check: no test kernels found (run tools/setup-deps.sh)" >&2
	echo "0 passed, 1 failed"
	exit 1
fi
run_part "static checks" tools/testing/check-build.sh "$@"
run_part "format unit tests" make -s -C tools/testing/format-test test
run_part "packaging (debs, DKMS, generator, completion)" tools/testing/check-package.sh "$@"
run_part "clean install of the packages in a Debian 12 chroot" tools/testing/check-install.sh
run_part "fuzzing" tools/testing/fuzz/run-fuzz.sh "${FUZZ_SECONDS:-20}"
# The selftests use the host-built qcow2setup (the guest's tree is read-only).
if make -s -C tools/qcow2setup >/dev/null; then
	echo "ok - qcow2setup builds"
	pass=$((pass + 1))
else
	echo "not ok - qcow2setup build"
	fail=$((fail + 1))
fi
# Also the replay tool of the crash tests (test_crash_replay.sh), with its tests.
run_part "log-writes replay tool" make -s -C tools/testing/log-writes test
run_part "boot from a qcow2 root image (initramfs hook)" tools/testing/check-boot.sh "${@: -1}"
run_part "boot Debian 12 with systemd: /etc/qcow2tab images opened and closed" tools/testing/check-systemd-boot.sh "${@: -1}"
run_part "selftests in VMs" tools/testing/check-vm.sh "$@"
# The detector self-test and write-path tests on the debug kernel (KASAN,
# lockdep, kmemleak, fault injection), when `make check-debug` has built and
# cached that kernel; skipped otherwise (the build takes 13 to 30 minutes).
# So that CI stays well under its limit, each run takes one of two groups of
# tests and an eighth of test_write_diff's cases, by the day of the year:
# eight successive days cover them all (on 6.1.192, 2026-12-06, all six tests
# took 1490 s, test_write_diff alone 704).  The whole suite: make
# check-debug; CHECK_DEBUG_TESTS and CHECK_DEBUG_SHARD override the choice.
# It took 16 minutes with a quarter of test_write_diff (296 s of it), 546 s
# with an eighth (2026-12-06: detector self-test 115 s).  When make check
# has already run longer than CHECK_DEBUG_AFTER seconds (default 3900) it
# is skipped, so that a slow day's CI still ends inside its 90 minutes.
# Its selftest VM gets at most 1500 s, and no more than leaves 200 s (the
# detector self-test) before CHECK_DEBUG_END seconds of make check
# (default 4800: the CI's 90 minutes less the bench smoke test after this
# part and a margin), so that a debug kernel that is slow rather than
# stuck fails its part instead of the whole CI by its limit.  It runs
# before the smoke test, whose length hardly varies (267-335 s).  In a CI
# run of 2026-12-06 (git eb8a268) the VMs ended at 3468 s, 432 s inside the
# guard; this part took 656 s, the smoke test 279 s, make check 4403 s and
# the CI 73 minutes.
day=$((10#$(date +%j)))
if [ $((day % 2)) = 0 ]; then
	debug_tests="test_write_diff.sh test_write_batch.sh test_cache_shrink.sh test_write_commit.sh"
else
	debug_tests="test_write_diff.sh test_write_enospc.sh test_fault_inject.sh test_write_corrupt.sh"
fi
elapsed=$(($(date +%s) - start))
if [ "$elapsed" -gt "${CHECK_DEBUG_AFTER:-3900}" ]; then
	say "## write paths on the debug kernel (make check at $elapsed s)"
	say "ok - debug kernel part # SKIP make check has run $elapsed s (over ${CHECK_DEBUG_AFTER:-3900})"
	skip=$((skip + 1))
else
	debug_timeout=$((${CHECK_DEBUG_END:-4800} - elapsed - 200))
	[ "$debug_timeout" -le 1500 ] || debug_timeout=1500
	run_part "write paths on the debug kernel" env DEBUG_CACHED_ONLY=1 \
		DEBUG_TIMEOUT="$debug_timeout" \
		DEBUG_SHARD="${CHECK_DEBUG_SHARD:-$((day % 8 + 1))/8}" \
		DEBUG_TESTS="${CHECK_DEBUG_TESTS:-$debug_tests}" \
		tools/testing/check-debug.sh
fi
# make bench in QUICK mode as a smoke test: every planned point must get a
# number; no assertion on any timing or ratio (about 5 minutes).
run_part "make bench smoke test (QUICK)" tools/bench/bench-smoke.sh

say "# make check took $(($(date +%s) - start)) s on kernels: $*"
say "$pass passed, $fail failed, $skip skipped"
[ "$fail" = 0 ]
