# SPDX-License-Identifier: GPL-2.0
# shellcheck shell=bash
#
# Sourced by the check scripts: add the counts of a summary line
# ("...: N passed, N failed[, N skipped]") to $pass, $fail and $skip.
pass=${pass:-0}
fail=${fail:-0}
skip=${skip:-0}

add_counts() {
	local line=$1 p f s
	p=$(sed -n 's/^\(.* \)\{0,1\}\([0-9][0-9]*\) passed.*/\2/p' <<<"$line")
	f=$(sed -n 's/.* \([0-9][0-9]*\) failed.*/\1/p' <<<"$line")
	s=$(sed -n 's/.* \([0-9][0-9]*\) skipped.*/\1/p' <<<"$line")
	pass=$((pass + ${p:-0}))
	fail=$((fail + ${f:-0}))
	skip=$((skip + ${s:-0}))
}

# The last summary line of a log file.
summary_line() {
	grep -E '[0-9]+ passed, [0-9]+ failed' "$1" | tail -n 1
}

# add_vm_result LOG STATUS WHAT: add the counts of a VM run's log (its
# selftests' summary line) and, if the run failed (STATUS != 0) with no
# failed test to account for it (the suite did not finish, or run-vm.sh found
# a kernel report (125) outside any test, or a timeout (124)), count one
# failure for WHAT.
add_vm_result() {
	local line

	line=$(summary_line "$1")
	[ -n "$line" ] && add_counts "$line"
	if [ "$2" != 0 ] && { [ -z "$line" ] || grep -q ' 0 failed' <<<"$line"; }; then
		echo "not ok - $3 exited with status $2"
		fail=$((fail + 1))
	fi
}
