#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# guest-init.sh - PID 1 of a run-vm.sh guest, after switch_root.
#
# Runs with bash from the host root, which is mounted read-only over 9p.
# initramfs-init.sh has already mounted /proc, /sys, /dev, /run, /tmp,
# /var/tmp, /dev/shm, /var/lib (writable), set up /lib/modules/KVER with the
# module under test, put the serial ports in raw mode, and copied the run
# description to /run/run-vm/spec (bash, written by run-vm.sh: RUNVM_*).
#
# Here: copy the kernel log to ttyS2, start udevd, modprobe the module, find
# the extra disks, run the command with its output on ttyS1, optionally log a
# warning, and report the exit status on ttyS3 (and, as a fallback, in a
# kernel message that the kernel prints on the console, ttyS0).
#
# Under TCG each exec costs ~0.1 s, so this script prefers bash builtins.
# It must never exit: PID 1 exiting panics the kernel.  Every path ends in
# _finish, which powers off.

set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
umask 022

RUNDIR=/run/run-vm
BB=/bin/busybox
KMSG_SED_PID=""
KMSG_DMESG_PID=""
QCOW2_DISKS=""

_msg()
{
	echo "run-vm guest: $*" >/dev/console
}

# Report STATUS (the command's exit status, or a word for an infrastructure
# failure) on ttyS3 and power off.
_finish()
{
	local status=$1

	# Twice: on ttyS3, and as a kernel message at KERN_CRIT, which the
	# kernel prints on the console synchronously (run-vm.sh falls back to
	# it if ttyS3 has nothing).
	echo "<2>run-vm: ${RUNVM_TOKEN:-} status ${status}" >/dev/kmsg
	_stop_kmsg_follow
	# Closing the port waits until the UART has sent everything.
	printf 'RUNVM_STATUS=%s\n' "${status}" >/dev/ttyS3
	sync
	"${BB}" poweroff -f >/dev/null 2>&1
	echo o >/proc/sysrq-trigger
	while :; do read -r -t 1 <>/dev/console; done
}

# _fail WORD MESSAGE...: infrastructure failure.
_fail()
{
	local what=$1

	shift
	_msg "error: $*"
	echo "run-vm: guest: error: $*" >/dev/ttyS1
	_finish "${what}"
}

# Copy the kernel log, from the start of the boot, to ttyS2 while the guest
# runs.  sed stops after copying the end marker that _stop_kmsg_follow logs,
# so nothing logged before the command finished is lost at power-off.
_start_kmsg_follow()
{
	local fifo=${RUNDIR}/kmsg.fifo

	"${BB}" mkfifo "${fifo}" || { _msg "warning: no kernel log copy"; return 0; }
	sed -u -n "p; /${RUNVM_TOKEN}-kmsg-end/q" <"${fifo}" >/dev/ttyS2 &
	KMSG_SED_PID=$!
	dmesg --follow --color=never >"${fifo}" 2>/dev/null &
	KMSG_DMESG_PID=$!
}

_stop_kmsg_follow()
{
	local watchdog

	[ -n "${KMSG_SED_PID}" ] || return 0
	echo "run-vm: ${RUNVM_TOKEN}-kmsg-end" >/dev/kmsg
	# Wait for sed (which drains ttyS2 when it exits).  It normally takes
	# well under a second; the bound is generous for a starved guest.
	( sleep 60; kill "${KMSG_SED_PID}" ) 2>/dev/null &
	watchdog=$!
	wait "${KMSG_SED_PID}" 2>/dev/null
	kill "${watchdog}" "${KMSG_DMESG_PID}" 2>/dev/null
	KMSG_SED_PID=""
}

_start_udev()
{
	local udevd=/lib/systemd/systemd-udevd

	[ -x "${udevd}" ] || udevd=/usr/lib/systemd/systemd-udevd
	if [ ! -x "${udevd}" ]; then
		_msg "warning: no systemd-udevd: no /dev/mapper nodes (dmsetup mknodes can make them)"
		return 0
	fi
	"${udevd}" --daemon --resolve-names=never >/dev/null 2>&1 ||
		_msg "warning: systemd-udevd failed to start"
	# Coldplug only the extra disks (for /dev/disk/by-id); a full coldplug
	# would load drivers for every emulated device, slow under TCG.  No
	# settle: dmsetup and the tests wait for their own events.
	[ "${RUNVM_NDISKS}" -gt 0 ] &&
		udevadm trigger --action=add --subsystem-match=block >/dev/null 2>&1
	return 0
}

# The line that splits the kernel log for run-vm.sh: a kernel report
# before it came from booting, before the module under test was loaded and
# the command started, and run-vm.sh boots once more (a TCG text-patching
# oops has been seen there).  At KERN_CRIT, so that the console, which
# keeps what the log copy on ttyS2 loses in a panic, has it too.  With
# --inject-boot-report N, boots 1..N log a fake oops line before it.
_boot_mark()
{
	if [ "${RUNVM_BOOT}" -le "${RUNVM_INJECT_BOOT_REPORT}" ]; then
		_msg "injecting a boot-time report (boot ${RUNVM_BOOT})"
		echo "<2>Oops: run-vm-inject-boot-report (injected by run-vm --inject-boot-report, boot ${RUNVM_BOOT})" >/dev/kmsg
	fi
	echo "<2>run-vm: ${RUNVM_TOKEN} booted" >/dev/kmsg
}

_load_module()
{
	local out

	[ -n "${RUNVM_MODULE}" ] || return 0
	if ! out=$(modprobe "${RUNVM_MODULE}" 2>&1); then
		_fail module "modprobe ${RUNVM_MODULE} failed: ${out}"
	fi
	_msg "loaded module ${RUNVM_MODULE}"
}

# QCOW2_DISKS: the extra disks in --disk order.  run-vm.sh gives disk i the
# virtio serial "runvm-disk<i>"; match on that rather than on probe order.
_find_disks()
{
	local i s serial found

	for ((i = 0; i < RUNVM_NDISKS; i++)); do
		found=""
		for s in /sys/block/vd*/serial; do
			[ -r "${s}" ] || continue
			read -r serial <"${s}"
			if [ "${serial}" = "runvm-disk${i}" ]; then
				s=${s%/serial}
				found=/dev/${s##*/}
				break
			fi
		done
		[ -b "${found}" ] || _fail infra "disk ${i} (serial runvm-disk${i}) not found"
		QCOW2_DISKS+="${QCOW2_DISKS:+ }${found}"
	done
}

# Log a kernel warning after the command, to prove that run-vm.sh fails a run
# whose kernel log has a report.  With LKDTM (not built in Debian's kernels)
# this is a real WARN with a backtrace.  Otherwise a line in the exact format
# of a WARN header is written to /dev/kmsg: it goes through the same kernel
# log, serial port and host-side scan as a real one.
_inject_warn()
{
	local direct=/sys/kernel/debug/provoke-crash/DIRECT

	if modprobe -q lkdtm 2>/dev/null && [ -w "${direct}" ]; then
		_msg "injecting a WARN with LKDTM"
		echo WARNING >"${direct}"
	else
		_msg "injecting a WARN line through /dev/kmsg (no LKDTM)"
		echo "<4>WARNING: CPU: 0 PID: $$ at run-vm-inject-warn (injected by run-vm --inject-warn)" >/dev/kmsg
	fi
}

# Kernels with kmemleak (the `make check-debug` kernel): stop the automatic
# scans before the command (under TCG a scan takes minutes); after it, wait
# until the objects are old enough to be reported (5 s), scan twice (kmemleak
# reports an unreferenced object only once a scan finds its contents
# unchanged since the scan before: one scan reports nothing new), and copy
# the report to the kernel log, where run-vm.sh finds its "unreferenced
# object" lines.  (A single scan missed a planted leak of 64 objects: see
# check-debug.sh's detector self-test.)
KMEMLEAK=/sys/kernel/debug/kmemleak

_kmemleak_before()
{
	[ -w "${KMEMLEAK}" ] || return 0
	echo scan=off >"${KMEMLEAK}"
}

_kmemleak_after()
{
	local line

	[ -w "${KMEMLEAK}" ] || return 0
	_msg "kmemleak scan"
	sleep 6
	echo scan >"${KMEMLEAK}"
	echo scan >"${KMEMLEAK}"
	while IFS= read -r line; do
		echo "<3>kmemleak report: ${line}" >/dev/kmsg
	done <"${KMEMLEAK}"
}

# Run the command with a clean environment, output to ttyS1.
_run_command()
{
	local v

	cd "${RUNVM_CWD}" 2>/dev/null ||
		_fail infra "working directory ${RUNVM_CWD} is not visible in the guest" \
			"(/tmp, /run, /var/tmp, /dev/shm are guest tmpfs)"
	_msg "running: ${RUNVM_CMD[*]}"
	echo "run-vm: start ${RUNVM_TOKEN}" >/dev/kmsg
	(
		for v in $(compgen -e); do
			unset "${v}" 2>/dev/null
		done
		export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
		export HOME=/root USER=root LOGNAME=root SHELL=/bin/bash TERM=dumb
		export QCOW2_VM=1 QCOW2_VM_KVER="${RUNVM_KVER}" QCOW2_DISKS
		for v in "${RUNVM_ENV[@]}"; do
			export "${v?}"
		done
		if ! type -t "${RUNVM_CMD[0]}" >/dev/null; then
			echo "run-vm: guest: ${RUNVM_CMD[0]}: command not found"
			exit 127
		fi
		exec "${RUNVM_CMD[@]}"
	) </dev/null >/dev/ttyS1 2>&1
}

_main()
{
	local status

	# shellcheck source=/dev/null
	. "${RUNDIR}/spec" || _fail infra "cannot read ${RUNDIR}/spec"
	# run-vm.sh boots with printk.devkmsg=on, so that the selftests' marks
	# written to /dev/kmsg are never rate-limited away.
	_start_kmsg_follow
	_start_udev
	_boot_mark
	_load_module
	_find_disks
	_kmemleak_before
	_run_command
	status=$?
	echo "run-vm: command exited with status ${status}" >/dev/kmsg
	_kmemleak_after
	[ "${RUNVM_INJECT_WARN}" = 1 ] && _inject_warn
	_finish "${status}"
}

_main "$@"
