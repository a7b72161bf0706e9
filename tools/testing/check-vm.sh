#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# check-vm.sh KVER...
#
# For each kernel: build the module and prove that the VM runner catches
# kernel reports and timeouts; then run the whole selftest suite, one VM per
# kernel, the VMs in parallel (a TCG guest keeps about one host CPU busy).
# Prints each suite's TAP (in kernel order, once all are done) and ends with
# "check-vm: N passed, N failed, N skipped".
#
# Environment:
#   SELFTESTS="test_a.sh test_b.sh"   run a subset
#   CHECK_VM_SERIAL=1                 one kernel after the other
set -u

top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top" || exit 1
# shellcheck source=tools/testing/counts.sh
. tools/testing/counts.sh

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
kvers=()

for kver in "$@"; do
	echo "# ==== kernel $kver: build and runner self-check"
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
	kvers+=("$kver")
done

# Slow tests whose subject does not depend on the kernel run in one VM only
# (the others report them as skipped), placed so that the two VMs take
# about as long: the nested VM and the crash replays in the last kernel's;
# the hostile-image corpus and the root-image boot in the first kernel's.
# On 2026-12-06 the 6.12.118 VM ran out of its hour with the root-image
# boot (350 s) and the crash replays (317 s) on it, while the 6.1 VM had
# finished after 54 minutes.  Later that day, with the crash replays (278 s)
# on 6.1 as well, the 6.1 VM ran 3887 s of tests and the 6.12 one 3389 s
# (the nested VM 341 s there, about 250 s since it boots faster).
ONE_KERNEL_TESTS="test_nested_vm.sh test_crash_replay.sh"
FIRST_KERNEL_TESTS="test_hostile_images.sh test_boot_root.sh"

# The long suites with case lists (test_read_matrix, test_read_corrupt,
# test_read_chain, test_read_compressed, test_read_snapshot, test_write_diff,
# test_write_faults, test_qcow2setup, test_write_fs, test_messages) run one
# shard of their cases per kernel (QCOW2_SHARD=K/N, see _shard_mine in
# test_common.sh: cases K, K+N, ...), so every case runs once and every
# suite on every kernel.  Which kernel gets which shard turns with the day
# of the year (kernel I of N takes shard (I - 1 + day) % N + 1), so that
# over N days every case runs on every kernel; CHECK_VM_DAY sets the day.

# run_suite KVER LOG [ELSEWHERE] [SHARD]: the selftest suite of one kernel,
# without the tests in ELSEWHERE; LOG.rc gets the status
run_suite()
{
	local kver=$1 log=$2 elsewhere=${3:-} shard=${4:-}

	# shellcheck disable=SC2086
	tools/testing/vm/run-vm.sh --kver "$kver" --module "build/$kver/dm-qcow2.ko" \
		--disk 2G --disk 2G --mem 3072 --timeout 4800 \
		--env "SELFTESTS_ELSEWHERE=$elsewhere" --env "QCOW2_SHARD=$shard" -- \
		selftests/dm-qcow2/run_tests.sh ${SELFTESTS:-} >"$log" 2>&1
	echo $? >"$log.rc"
}

day=${CHECK_VM_DAY:-$((10#$(date +%j)))}
i=0
for kver in "${kvers[@]}"; do
	i=$((i + 1))
	elsewhere="" shard=""
	if [ -z "${SELFTESTS:-}" ] && [ "${#kvers[@]}" -gt 1 ]; then
		shard="$(((i - 1 + day) % ${#kvers[@]} + 1))/${#kvers[@]}"
		if [ "$i" -lt "${#kvers[@]}" ]; then
			elsewhere=$ONE_KERNEL_TESTS
		else
			elsewhere=$FIRST_KERNEL_TESTS
		fi
	fi
	echo "# ==== kernel $kver: selftests started in a VM at $(date +%T)${elsewhere:+ (skipping here, run in another VM: $elsewhere)}${shard:+ (case shard $shard)}"
	if [ "${CHECK_VM_SERIAL:-0}" = 1 ]; then
		run_suite "$kver" "$work/$i.log" "$elsewhere" "$shard"
	else
		run_suite "$kver" "$work/$i.log" "$elsewhere" "$shard" &
		# Start the VMs a little apart: their boots are the busiest part.
		sleep 20
	fi
done
wait

i=0
for kver in "${kvers[@]}"; do
	i=$((i + 1))
	echo "# ==== kernel $kver: selftests"
	cat "$work/$i.log"
	rc=$(cat "$work/$i.log.rc" 2>/dev/null || echo 126)
	add_vm_result "$work/$i.log" "$rc" "selftest VM on $kver"
done
echo "check-vm: $pass passed, $fail failed, $skip skipped"
[ "$fail" = 0 ]
