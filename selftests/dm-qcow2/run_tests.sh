#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# run_tests.sh - run the dm-qcow2 selftests and print TAP for the suite.
#
# Usage: run_tests.sh [-t SECONDS] [TEST...]
#
# Runs the given tests (file names in this directory, e.g. test_bad_table.sh),
# or else every test in TEST_PROGS of the Makefile, in that order, followed
# by any other test_*.sh (with a note: add it to TEST_PROGS).  Meant to run
# as root in a throw-away VM:
#
#	tools/testing/vm/run-vm.sh --kver KVER --module build/KVER/dm-qcow2.ko \
#		--disk 1G -- selftests/dm-qcow2/run_tests.sh
#
# Each test runs under timeout(1): -t SECONDS, else "timeout=N" from the
# settings file (kselftest style), else 45 s.  Its output is printed with a
# "# " prefix, then one line "ok N selftests: dm-qcow2: TEST", "not ok ...",
# or "ok ... # SKIP".  A test fails when it exits with a status other than
# 0 (pass) or 4 (skip), when it times out, or when the kernel log it
# produced has a kernel report (oops, BUG, WARNING, lockdep, KASAN, hung
# task, ...; same list as run-vm.sh).
#
# Tests named in $SELFTESTS_ELSEWHERE (space-separated) are not run and are
# reported as skipped: `make check` runs a few slow tests whose subject does
# not depend on the kernel (initramfs scripts, a nested VM) in one kernel's
# VM only.
#
# The last line is "dm-qcow2 selftests: N passed, N failed, N skipped".
# Exit status: 0 if nothing failed, else 1.

set -u

DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SUITE=dm-qcow2
KSFT_SKIP=4

# Keep in sync with test_common.sh and tools/testing/vm/run-vm.sh.
KERNEL_REPORT_RE='Oops|BUG:|WARNING:|possible circular locking|possible recursive locking|inconsistent lock state|INFO: trying to register non-static key|suspicious RCU usage|KASAN|UBSAN|unreferenced object|blocked for more than|Kernel panic|general protection fault|Call Trace:'

timeout_override=""

usage()
{
	sed -n 's/^# \{0,1\}//; /^Usage:/,/^$/p' "${BASH_SOURCE[0]}" | sed '$d'
}

# A variable of the Makefile (":=", "=" and "+=", with continuation lines):
# TEST_PROGS by default.
makefile_tests()
{
	[ -r "${DIR}/Makefile" ] || return 0
	awk -v var="${1:-TEST_PROGS}" '
		/\\$/ { sub(/\\$/, ""); buf = buf $0 " "; next }
		{ line = buf $0; buf = "" }
		line ~ ("^[ \t]*" var "[ \t]*(:|\\+)?=") {
			sub(/^[^=]*=/, "", line)
			n = split(line, w, /[ \t]+/)
			for (i = 1; i <= n; i++)
				if (w[i] != "")
					print w[i]
		}' "${DIR}/Makefile"
}

# Every test_*.sh of the directory but the helper test_common.sh, sorted.
all_tests()
{
	local f

	for f in "${DIR}"/test_*.sh; do
		[ -f "${f}" ] || continue
		[ "${f##*/}" = test_common.sh ] && continue
		echo "${f##*/}"
	done | LC_ALL=C sort
}

settings_timeout()
{
	local t=""

	[ -r "${DIR}/settings" ] &&
		t=$(sed -n 's/^timeout=\([0-9][0-9]*\)$/\1/p' "${DIR}/settings" | tail -n 1)
	echo "${t:-45}"
}

kmsg()
{
	echo "<5>$*" 2>/dev/null >/dev/kmsg
}

# Kernel log lines after the line containing $1 (all lines if not found).
dmesg_after()
{
	dmesg 2>/dev/null | awk -v m="$1" '
		{ line[NR] = $0 }
		index($0, m) { start = NR }
		END { for (i = start + 1; i <= NR; i++) print line[i] }'
}

main()
{
	local tests=() t n=0 pass=0 fail=0 skip=0 rc status mark reports
	local tmo start elapsed f

	while [ $# -gt 0 ]; do
		case "$1" in
		-t) timeout_override=$2; shift 2 ;;
		-h|--help) usage; exit 0 ;;
		--) shift; break ;;
		-*) echo "run_tests.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
		*) break ;;
		esac
	done

	local notes=() pending=()

	if [ $# -gt 0 ]; then
		for t in "$@"; do
			tests+=("${t##*/}")
		done
	else
		# TEST_PROGS first, in its order, then any other test_*.sh
		# (sorted), so that a test missing from the Makefile still runs.
		mapfile -t tests < <(makefile_tests)
		mapfile -t pending < <(makefile_tests TEST_PROGS_PENDING)
		for f in $(all_tests); do
			[[ " ${tests[*]} " == *" ${f} "* ]] && continue
			if [[ " ${pending[*]} " == *" ${f} "* ]]; then
				notes+=("# note: ${f} is pending (a known open bug, see the Makefile): not run by default")
				continue
			fi
			tests+=("${f}")
			[ -r "${DIR}/Makefile" ] &&
				notes+=("# note: ${f} is not in TEST_PROGS of the Makefile")
		done
	fi
	tmo=${timeout_override:-$(settings_timeout)}

	echo "TAP version 13"
	echo "1..${#tests[@]}"
	[ ${#notes[@]} -eq 0 ] || printf '%s\n' "${notes[@]}"
	[ "${EUID}" -eq 0 ] || echo "# note: not root, most tests will skip"

	for t in "${tests[@]}"; do
		n=$((n + 1))
		echo "# timeout set to ${tmo}"
		echo "# selftests: ${SUITE}: ${t}"
		if [ ! -f "${DIR}/${t}" ]; then
			echo "# no such test ${DIR}/${t}"
			echo "not ok ${n} selftests: ${SUITE}: ${t} # no such test"
			fail=$((fail + 1))
			continue
		fi

		if [[ " ${SELFTESTS_ELSEWHERE:-} " == *" ${t} "* ]]; then
			echo "ok ${n} selftests: ${SUITE}: ${t} # SKIP run in another kernel's VM"
			skip=$((skip + 1))
			continue
		fi

		mark="${SUITE} selftests: start ${t} $$.${n}.${RANDOM}${RANDOM}"
		kmsg "${mark}"
		start=${SECONDS}
		(
			cd "${DIR}" || exit 1
			if [ -x "./${t}" ]; then
				exec timeout --kill-after=10 "${tmo}" "./${t}"
			else
				exec timeout --kill-after=10 "${tmo}" bash "./${t}"
			fi
		) </dev/null 2>&1 | sed -u 's/^/# /'
		rc=${PIPESTATUS[0]}
		elapsed=$((SECONDS - start))

		# Scan the kernel log written during the test; a kernel report
		# fails the test whatever its exit status.
		reports=""
		if [ "${EUID}" -eq 0 ]; then
			reports=$(dmesg_after "${mark}" | grep -E -- "${KERNEL_REPORT_RE}")
			kmsg "${SUITE} selftests: end ${t} rc=${rc}"
		fi

		echo "# ${t}: exit ${rc} after ${elapsed} s"
		if [ -n "${reports}" ]; then
			printf '# kernel report: %s\n' "${reports}"
			echo "not ok ${n} selftests: ${SUITE}: ${t} # kernel report"
			fail=$((fail + 1))
		elif [ "${rc}" -eq 0 ]; then
			echo "ok ${n} selftests: ${SUITE}: ${t}"
			pass=$((pass + 1))
		elif [ "${rc}" -eq "${KSFT_SKIP}" ]; then
			echo "ok ${n} selftests: ${SUITE}: ${t} # SKIP"
			skip=$((skip + 1))
		elif [ "${rc}" -eq 124 ] || [ "${rc}" -eq 137 ]; then
			echo "not ok ${n} selftests: ${SUITE}: ${t} # TIMEOUT ${tmo} seconds"
			fail=$((fail + 1))
		else
			echo "not ok ${n} selftests: ${SUITE}: ${t} # exit=${rc}"
			fail=$((fail + 1))
		fi
	done

	echo "# Totals: pass:${pass} fail:${fail} xfail:0 xpass:0 skip:${skip} error:0"
	status=0
	[ "${fail}" -eq 0 ] || status=1
	echo "${SUITE} selftests: ${pass} passed, ${fail} failed, ${skip} skipped"
	exit "${status}"
}

main "$@"
