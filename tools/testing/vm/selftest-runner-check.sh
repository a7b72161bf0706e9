#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# selftest-runner-check.sh - check that run-vm.sh reports what happened in
# the guest: the command's exit status, a timeout, and a kernel warning
# (which must fail a run even when the command succeeds), and a kernel report
# before the command started, which boots the guest once more.
#
# Usage: selftest-runner-check.sh [[--kver] KVER]
#
# KVER defaults to the first kernel printed by tools/testing/kvers.sh, else
# the newest /boot/vmlinuz-*.  Prints TAP; exits 1 if any check fails.
# Takes about 9 x 7 s under TCG.

set -u

VM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_VM=${VM_DIR}/run-vm.sh

kver=""
while [ $# -gt 0 ]; do
	case "$1" in
	--kver) kver=$2; shift 2 ;;
	-h|--help) sed -n 's/^# \{0,1\}//; /^Usage:/,/^$/p' "$0"; exit 0 ;;
	-*) echo "usage: $0 [[--kver] KVER]" >&2; exit 2 ;;
	*) kver=$1; shift ;;
	esac
done
if [ -z "${kver}" ] && [ -x "${VM_DIR}/../kvers.sh" ]; then
	kver=$("${VM_DIR}/../kvers.sh" 2>/dev/null | awk '{ print $1; exit }')
fi
if [ -z "${kver}" ]; then
	kver=$(find /boot -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sed 's/^vmlinuz-//' |
		sort -V | tail -n 1)
fi
[ -n "${kver}" ] || { echo "no kernel found in /boot" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/selftest-runner-check.XXXXXX") || exit 2
trap 'rm -rf "${work}"' EXIT

n=0
nfail=0

# check DESC EXPECTED_STATUS STDERR_ERE NOT_STDERR_ERE -- RUN-VM ARGS...
# (either ERE may be empty)
check()
{
	local desc=$1 want=$2 pat=$3 nopat=$4 rc start secs ok=1 log boots=""

	shift 5
	n=$((n + 1))
	log=${work}/${n}
	start=${SECONDS}
	"${RUN_VM}" --kver "${kver}" --log "${log}" "$@" >"${log}.out" 2>"${log}.err"
	rc=$?
	secs=$((SECONDS - start))
	grep -q '^run-vm: booting again' "${log}.err" && boots=" (booted twice)"
	echo "# run-vm.sh $*: exit ${rc} after ${secs} s${boots}"
	[ "${rc}" -eq "${want}" ] || ok=0
	if [ -n "${pat}" ] && ! grep -Eq -- "${pat}" "${log}.err"; then
		echo "# stderr has no line matching '${pat}'"
		ok=0
	fi
	if [ -n "${nopat}" ] && grep -Eq -- "${nopat}" "${log}.err"; then
		echo "# stderr has a line matching '${nopat}'"
		ok=0
	fi
	if [ "${ok}" = 1 ]; then
		echo "ok ${n} ${desc}"
	else
		echo "# expected exit ${want}; stdout and stderr:"
		sed 's/^/#   /' "${log}.out" "${log}.err" | tail -n 30
		echo "not ok ${n} ${desc}"
		nfail=$((nfail + 1))
	fi
}

echo "TAP version 13"
echo "# kernel ${kver}"
echo "1..7"
check "a command that succeeds: exit 0" 0 "" "" -- -- true
check "a command that fails: exit 1" 1 "" "" -- -- false
check "the exit status is passed through: exit 7" 7 "" "" -- -- sh -c 'exit 7'
check "a kernel WARNING after a successful command: exit 125, no second boot" 125 \
	'^run-vm: kernel report: .*WARNING:' '^run-vm: booting again' -- --inject-warn -- true
check "a guest that runs too long: exit 124" 124 'timeout' "" -- --timeout 5 -- sleep 100
check "a kernel report before the command on boot 1 only: booted again, exit 7" 7 \
	'^run-vm: booting again' '^run-vm: kernel report:' -- --inject-boot-report 1 -- sh -c 'exit 7'
check "a kernel report before the command on both boots: exit 125" 125 \
	'^run-vm: kernel report: .*run-vm-inject-boot-report' "" -- --inject-boot-report 2 -- true

echo "# Totals: pass:$((n - nfail)) fail:${nfail} xfail:0 xpass:0 skip:0 error:0"
echo "run-vm checks: $((n - nfail)) passed, ${nfail} failed"
[ "${nfail}" -eq 0 ]
