#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# check-vm.sh KVER...
#
# For each kernel: build the module, prove that the VM runner catches kernel
# reports and timeouts, then run the whole selftest suite in a VM.
# Prints each suite's TAP and ends with "check-vm: N passed, N failed, N skipped".
# Set SELFTESTS="test_a.sh test_b.sh" to run a subset.
set -u

top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top" || exit 1
# shellcheck source=tools/testing/counts.sh
. tools/testing/counts.sh

for kver in "$@"; do
	echo "# ==== kernel $kver"
	if ! make -s KVER="$kver" modules >/dev/null; then
		echo "not ok - build for $kver"
		fail=$((fail + 1))
		continue
	fi

	out=$(tools/testing/vm/selftest-runner-check.sh "$kver" 2>&1)
	echo "$out"
	line=$(grep -E '[0-9]+ passed, [0-9]+ failed' <<<"$out" | tail -n 1)
	if [ -n "$line" ]; then
		add_counts "$line"
	else
		echo "not ok - runner self-check on $kver gave no summary"
		fail=$((fail + 1))
	fi

	log=$(mktemp)
	# shellcheck disable=SC2086
	tools/testing/vm/run-vm.sh --kver "$kver" --module "build/$kver/dm-qcow2.ko" \
		--disk 2G --disk 2G --mem 3072 --timeout 2400 -- \
		selftests/dm-qcow2/run_tests.sh ${SELFTESTS:-} | tee "$log"
	rc=${PIPESTATUS[0]}
	line=$(summary_line "$log")
	rm -f "$log"
	if [ -n "$line" ]; then
		add_counts "$line"
	fi
	if [ "$rc" != 0 ] && { [ -z "$line" ] || grep -q ' 0 failed' <<<"$line"; }; then
		# The suite did not finish, or the VM runner found a kernel report
		# (125) or a timeout (124) that no single test accounts for.
		echo "not ok - selftest VM on $kver exited with status $rc"
		fail=$((fail + 1))
	fi
done
echo "check-vm: $pass passed, $fail failed, $skip skipped"
[ "$fail" = 0 ]
