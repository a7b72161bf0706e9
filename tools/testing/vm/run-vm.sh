#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# run-vm.sh - run one command as root in a throw-away qemu VM booted with an
# installed distribution kernel, optionally with a module under test loaded.
#
# Usage:
#   run-vm.sh --kver KVER [--module PATH.ko] [--disk SIZE]... [--mem MiB]
#             [--cpus N] [--timeout SEC] [--log DIR] [--env VAR=VALUE]...
#             [--kernel IMAGE] [--append PARAMS]
#             [--inject-warn] [--inject-boot-report N] [--verbose]
#             -- COMMAND [ARGS...]
#
# The guest:
#   - boots /boot/vmlinuz-KVER with a small busybox initramfs (built by this
#     script and cached in ${XDG_CACHE_HOME:-$HOME/.cache}/dm-qcow2/), which
#     loads the 9p/virtio modules of KVER, mounts the host's / read-only over
#     9p and switch_roots into it to run tools/testing/vm/guest-init.sh;
#   - has tmpfs on /tmp, /run, /var/tmp, /dev/shm and a writable /var/lib;
#     anything of the host under those paths is not visible in the guest;
#   - with --module, has /lib/modules/KVER extended by extra/<name>.ko (depmod
#     is run on the host, cached per module checksum), so both
#     `modprobe <name>` and the kernel's request_module() autoload work, and
#     the module is loaded with modprobe before COMMAND runs (the run fails
#     with status 126 if it does not load);
#   - runs COMMAND as root in the current directory (same path over 9p), with
#     QCOW2_VM=1, QCOW2_VM_KVER=KVER and QCOW2_DISKS="/dev/vda /dev/vdb ..."
#     in the environment, stdin from /dev/null.
#
# --disk SIZE (repeatable) creates a sparse raw file of SIZE (truncate -s
# syntax: 512M, 1G, ...) in /dev/shm for this run only and attaches it as a
# virtio-blk disk.  The disks appear in the guest as /dev/vda, /dev/vdb, ...
# in the order given (also listed in QCOW2_DISKS, and as
# /dev/disk/by-id/virtio-runvm-disk<N>).  They live in host tmpfs, so
# O_DIRECT on the host side is impossible: qemu uses cache=writeback, which
# still gives the guest a volatile write cache, so guest flushes and FUA are
# honoured as far as the guest can tell.  The files are removed afterwards.
#
# Output: COMMAND's stdout+stderr are streamed live to this script's stdout.
# With --log DIR, DIR keeps console.log (guest console), output.log (COMMAND
# output) and dmesg.log (the whole kernel log); without it they go to a
# temporary directory that is removed on success and kept (and printed) on
# failure.
#
# Exit status of run-vm.sh:
#   0..255  COMMAND's exit status, when the kernel log is clean and the
#           guest finished in time (a COMMAND exiting with 124..126 itself
#           cannot be told apart from the cases below)
#   124     timeout: the guest did not finish within --timeout (default 1200 s)
#   125     kernel report: the kernel log has an oops, BUG:, WARNING:, lockdep,
#           KASAN/UBSAN, kmemleak, hung-task, panic, GPF or "Call Trace:"
#           report, even if COMMAND succeeded.  The lines are printed with a
#           "run-vm: kernel report:" prefix.  Takes precedence over 124, as a
#           hang caused by an oops is best reported as the oops.
#           A report that came before the guest loaded the module and
#           started COMMAND (no module code had run: it is the kernel's or
#           the emulator's) is printed as "run-vm: boot-time kernel report:"
#           and the guest is booted once more, from scratch, saying
#           "run-vm: booting again" (boot 1's logs go to DIR/boot1 with
#           --log); 125 when boot 2 has a report too.
#   126     infrastructure failure: no kernel image, the module does not match
#           KVER or did not load, the guest did not boot or did not report a
#           status (see console.log)
#   2       usage error
#   130     interrupted (SIGINT/SIGTERM/SIGHUP); qemu is killed, disks removed
#
# --kernel IMAGE boots IMAGE (a bzImage) instead of /boot/vmlinuz-KVER: a
# kernel with everything the guest needs built in (virtio PCI and block,
# 9p over virtio, overlayfs, devtmpfs), such as the `make check-debug`
# kernel.  KVER must then be its release (`uname -r` in the guest); no
# /lib/modules/KVER is needed on the host and the initramfs loads no
# module.  The module tree of --module holds only that module;
# modules.builtin and modules.builtin.modinfo next to IMAGE, if present,
# are given to depmod.  --append PARAMS adds kernel parameters.
#
# --inject-warn makes the guest log a kernel warning after COMMAND, to test
# that the report detector works (see _inject_warn in guest-init.sh: LKDTM
# when available, otherwise a WARN-format line written to /dev/kmsg, as the
# Debian kernels have no LKDTM).  --inject-boot-report N makes boots 1..N
# log a fake oops line before the module is loaded (see _boot_mark in
# guest-init.sh), to test the boot-again path: 1 boots again and then runs
# COMMAND, 2 ends in 125.
#
# Acceleration: TCG by default.  KVM is used only when QCOW2_VM_KVM=1 and
# /dev/kvm is usable (KVM guests hang on some hosts).

set -u

VM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GUEST_INIT=${VM_DIR}/guest-init.sh
INITRAMFS_INIT=${VM_DIR}/initramfs-init.sh
CACHE_DIR=${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/dm-qcow2

# Kernel log lines that fail a run.  Keep in sync with
# selftests/dm-qcow2/test_common.sh (_KERNEL_REPORT_RE).
KERNEL_REPORT_RE='Oops|BUG:|WARNING:|possible circular locking|possible recursive locking|inconsistent lock state|INFO: trying to register non-static key|suspicious RCU usage|KASAN|UBSAN|unreferenced object|blocked for more than|Kernel panic|general protection fault|Call Trace:'

opt_kver=""
opt_kernel=""
opt_append=""
opt_module=""
opt_disks=()
opt_mem=2048
opt_cpus=2
opt_timeout=1200
opt_log=""
opt_env=()
opt_inject_warn=0
opt_inject_boot=0
opt_verbose=0
cmd=()

RUNDIR=""
MODTREE_TEMP=""
LOGDIR=""
LOGDIR_TEMP=0
QEMU_PID=""
TAIL_PID=""

_usage()
{
	sed -n '/^# Usage:/,/^# The guest:/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

_err()
{
	echo "run-vm: error: $*" >&2
}

_info()
{
	[ "${opt_verbose}" = 1 ] && echo "run-vm: $*" >&2
	return 0
}

_usage_err()
{
	_err "$*"
	_usage >&2
	exit 2
}

_cleanup()
{
	local rc=$?

	trap - EXIT INT TERM HUP
	if [ -n "${QEMU_PID}" ] && kill -0 "${QEMU_PID}" 2>/dev/null; then
		kill -TERM "${QEMU_PID}" 2>/dev/null
		wait "${QEMU_PID}" 2>/dev/null
	fi
	if [ -n "${TAIL_PID}" ] && kill -0 "${TAIL_PID}" 2>/dev/null; then
		kill "${TAIL_PID}" 2>/dev/null
		wait "${TAIL_PID}" 2>/dev/null
	fi
	[ -n "${RUNDIR}" ] && rm -rf "${RUNDIR}"
	[ -n "${MODTREE_TEMP}" ] && rm -f "${MODTREE_TEMP}"
	if [ "${LOGDIR_TEMP}" = 1 ] && [ -n "${LOGDIR}" ]; then
		if [ "${rc}" = 0 ]; then
			rm -rf "${LOGDIR}"
		else
			echo "run-vm: logs kept in ${LOGDIR}" >&2
		fi
	fi
	exit "${rc}"
}

_on_signal()
{
	_err "interrupted"
	exit 130
}

_parse_args()
{
	while [ $# -gt 0 ]; do
		case "$1" in
		--kver) [ $# -ge 2 ] || _usage_err "$1 needs a value"; opt_kver=$2; shift 2 ;;
		--kernel) [ $# -ge 2 ] || _usage_err "$1 needs a value"; opt_kernel=$2; shift 2 ;;
		--append) [ $# -ge 2 ] || _usage_err "$1 needs a value"; opt_append=$2; shift 2 ;;
		--module) [ $# -ge 2 ] || _usage_err "$1 needs a value"; opt_module=$2; shift 2 ;;
		--disk) [ $# -ge 2 ] || _usage_err "$1 needs a value"; opt_disks+=("$2"); shift 2 ;;
		--mem) [ $# -ge 2 ] || _usage_err "$1 needs a value"; opt_mem=$2; shift 2 ;;
		--cpus) [ $# -ge 2 ] || _usage_err "$1 needs a value"; opt_cpus=$2; shift 2 ;;
		--timeout) [ $# -ge 2 ] || _usage_err "$1 needs a value"; opt_timeout=$2; shift 2 ;;
		--log) [ $# -ge 2 ] || _usage_err "$1 needs a value"; opt_log=$2; shift 2 ;;
		--env) [ $# -ge 2 ] || _usage_err "$1 needs a value"; opt_env+=("$2"); shift 2 ;;
		--inject-warn) opt_inject_warn=1; shift ;;
		--inject-boot-report) [ $# -ge 2 ] || _usage_err "$1 needs a value"; opt_inject_boot=$2; shift 2 ;;
		--verbose|-v) opt_verbose=1; shift ;;
		-h|--help) _usage; exit 0 ;;
		--) shift; cmd=("$@"); break ;;
		*) _usage_err "unknown option '$1' (COMMAND goes after --)" ;;
		esac
	done

	[ -n "${opt_kver}" ] || _usage_err "--kver is required"
	[ ${#cmd[@]} -gt 0 ] || _usage_err "no COMMAND given after --"
	[[ "${opt_mem}" =~ ^[0-9]+$ ]] || _usage_err "--mem wants MiB"
	[[ "${opt_cpus}" =~ ^[1-9][0-9]*$ ]] || _usage_err "--cpus wants a number"
	[[ "${opt_timeout}" =~ ^[1-9][0-9]*$ ]] || _usage_err "--timeout wants seconds"
	[[ "${opt_inject_boot}" =~ ^[0-9]$ ]] || _usage_err "--inject-boot-report wants a number of boots"
	local e
	for e in "${opt_env[@]}"; do
		[[ "${e}" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || _usage_err "--env wants VAR=VALUE, got '${e}'"
	done
}

_check_host()
{
	local t

	KERNEL=/boot/vmlinuz-${opt_kver}
	MODDIR=/lib/modules/${opt_kver}
	if [ -n "${opt_kernel}" ]; then
		KERNEL=$(realpath "${opt_kernel}" 2>/dev/null) || KERNEL=${opt_kernel}
		MODDIR=""
	fi
	[ -r "${KERNEL}" ] || { _err "no kernel image ${KERNEL}"; exit 126; }
	[ -z "${MODDIR}" ] || [ -d "${MODDIR}/kernel" ] || { _err "no modules in ${MODDIR}"; exit 126; }
	[ -r "${GUEST_INIT}" ] || { _err "missing ${GUEST_INIT}"; exit 126; }
	[ -r "${INITRAMFS_INIT}" ] || { _err "missing ${INITRAMFS_INIT}"; exit 126; }
	for t in qemu-system-x86_64 cpio depmod modprobe modinfo xz timeout sha256sum; do
		command -v "${t}" >/dev/null || { _err "'${t}' not found"; exit 126; }
	done
	BUSYBOX=$(command -v busybox)
	if [ -z "${BUSYBOX}" ] || ! "${BUSYBOX}" --list 2>/dev/null | grep -qx switch_root; then
		_err "busybox (static, with switch_root) not found; install busybox-static"
		exit 126
	fi
	if [ -n "${opt_module}" ]; then
		[ -r "${opt_module}" ] || { _err "module ${opt_module} not found"; exit 126; }
		opt_module=$(realpath "${opt_module}")
		local vermagic
		vermagic=$(modinfo -F vermagic "${opt_module}" 2>/dev/null)
		case "${vermagic}" in
		"${opt_kver} "*|"${opt_kver}") ;;
		*) _err "${opt_module} is built for '${vermagic%% *}', not ${opt_kver}"; exit 126 ;;
		esac
	fi
}

# Modules the initramfs must insmod, in order (dependencies first), for
# virtio PCI, virtio-blk, 9p over virtio and overlayfs.  Built-in ones are
# skipped.
_initramfs_modules()
{
	local m line seen=" "

	# --kernel: everything is built in.
	[ -n "${opt_kernel}" ] && return 0
	for m in virtio_pci virtio_blk 9pnet_virtio 9p overlay; do
		modprobe --show-depends -S "${opt_kver}" "${m}" 2>/dev/null ||
			{ _err "modprobe --show-depends -S ${opt_kver} ${m} failed"; return 1; }
	done | while read -r line; do
		case "${line}" in
		insmod\ *)
			line=${line#insmod }
			line=${line%% *}
			case "${seen}" in *" ${line} "*) continue ;; esac
			seen+="${line} "
			echo "${line}"
			;;
		esac
	done
}

# Build (or reuse) the cached base initramfs for KVER; sets INITRAMFS.
_build_initramfs()
{
	local mods key stage m base tmp

	mods=$(_initramfs_modules) || exit 126
	[ -n "${mods}" ] || [ -n "${opt_kernel}" ] ||
		{ _err "no 9p/virtio modules found for ${opt_kver}"; exit 126; }
	key=$( {
		cat "${INITRAMFS_INIT}"
		echo "${mods}"
		# shellcheck disable=SC2086 # one path per word
		stat -c '%n %s %Y' "${BUSYBOX}" ${mods}
	} | sha256sum | cut -c1-16)
	INITRAMFS=${CACHE_DIR}/initramfs-${opt_kver}-${key}.cpio
	[ -s "${INITRAMFS}" ] && { _info "using cached ${INITRAMFS}"; return 0; }

	_info "building ${INITRAMFS}"
	mkdir -p "${CACHE_DIR}" || exit 126
	stage=$(mktemp -d "${CACHE_DIR}/.initramfs.XXXXXX") || exit 126
	mkdir -p "${stage}"/{bin,dev,proc,sys,newroot,modules}
	cp "${BUSYBOX}" "${stage}/bin/busybox"
	ln -s busybox "${stage}/bin/sh"
	mknod -m 600 "${stage}/dev/console" c 5 1 2>/dev/null
	install -m 755 "${INITRAMFS_INIT}" "${stage}/init"
	: >"${stage}/modules/order"
	for m in ${mods}; do
		base=${m##*/}
		case "${m}" in
		*.ko.xz) xz -dc "${m}" >"${stage}/modules/${base%.xz}" || exit 126; base=${base%.xz} ;;
		*.ko.zst) zstd -qdc "${m}" >"${stage}/modules/${base%.zst}" || exit 126; base=${base%.zst} ;;
		*.ko.gz) gzip -dc "${m}" >"${stage}/modules/${base%.gz}" || exit 126; base=${base%.gz} ;;
		*) cp "${m}" "${stage}/modules/${base}" ;;
		esac
		echo "${base}" >>"${stage}/modules/order"
	done
	tmp=${INITRAMFS}.tmp.$$
	(cd "${stage}" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"${tmp}" ||
		{ rm -rf "${stage}" "${tmp}"; _err "cpio failed"; exit 126; }
	rm -rf "${stage}"
	mv -f "${tmp}" "${INITRAMFS}"
	# Drop stale images for this kernel.
	find "${CACHE_DIR}" -maxdepth 1 -name "initramfs-${opt_kver}-*.cpio" \
		! -name "${INITRAMFS##*/}" -delete 2>/dev/null
	return 0
}

# depmod over the stock tree of KVER plus extra/<module>.ko, on the host (it
# has to read every module, which is far slower under TCG), cached per module
# checksum.  Result: a cpio holding run-vm/modtree/{modules.*,extra/*.ko};
# sets MODTREE_CPIO and MODULE_NAME.
_build_modtree()
{
	local sum stage d tmp warn f

	MODTREE_CPIO=""
	MODULE_NAME=""
	[ -n "${opt_module}" ] || return 0
	MODULE_NAME=$(basename "${opt_module}" .ko)
	sum=$(sha256sum "${opt_module}" | cut -c1-16)
	MODTREE_CPIO=${CACHE_DIR}/modtree-${opt_kver}-${MODULE_NAME}-${sum}.cpio
	if [ -n "${opt_kernel}" ]; then
		_build_modtree_alone
		return
	fi
	if [ -s "${MODTREE_CPIO}" ] && [ "${MODTREE_CPIO}" -nt "${MODDIR}/modules.dep" ]; then
		_info "using cached ${MODTREE_CPIO}"
		touch "${MODTREE_CPIO}"
		return 0
	fi

	_info "running depmod for ${opt_module}"
	mkdir -p "${CACHE_DIR}" || exit 126
	stage=$(mktemp -d "${CACHE_DIR}/.modtree.XXXXXX") || exit 126
	d=${stage}/lib/modules/${opt_kver}
	mkdir -p "${d}/extra"
	ln -s "${MODDIR}/kernel" "${d}/kernel"
	cp "${MODDIR}"/modules.order "${MODDIR}"/modules.builtin* "${d}/" 2>/dev/null
	cp "${opt_module}" "${d}/extra/${MODULE_NAME}.ko"
	if ! warn=$(depmod -b "${stage}" "${opt_kver}" 2>&1); then
		_err "depmod failed: ${warn}"
		rm -rf "${stage}"
		exit 126
	fi
	[ -n "${warn}" ] && echo "run-vm: depmod: ${warn}" >&2
	# Everything else comes from the stock tree, which initramfs-init.sh
	# bind-mounts on /run/run-vm/stock: kernel/, modules.order, ...
	rm -f "${d}/kernel" "${d}/modules.order" "${d}/modules.builtin" \
		"${d}/modules.builtin.modinfo"
	for f in "${MODDIR}"/*; do
		[ -e "${d}/${f##*/}" ] || ln -s "/run/run-vm/stock/${f##*/}" "${d}/${f##*/}"
	done
	mkdir -p "${stage}/cpio/run-vm"
	mv "${d}" "${stage}/cpio/run-vm/modtree"
	tmp=${MODTREE_CPIO}.tmp.$$
	(cd "${stage}/cpio" && find run-vm | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"${tmp}" ||
		{ rm -rf "${stage}" "${tmp}"; _err "cpio failed"; exit 126; }
	rm -rf "${stage}"
	mv -f "${tmp}" "${MODTREE_CPIO}"
	# Keep the 4 newest trees per kernel.
	find "${CACHE_DIR}" -maxdepth 1 -name "modtree-${opt_kver}-*.cpio" -printf '%T@ %p\n' |
		sort -rn | tail -n +5 | while read -r _ tmp; do rm -f "${tmp}"; done
	return 0
}

# --kernel: a module tree with only extra/<module>.ko (plus modules.builtin*
# found next to the image), not cached (depmod over one module is quick).
_build_modtree_alone()
{
	local stage d tmp warn f

	stage=$(mktemp -d "${TMPDIR:-/tmp}/run-vm-modtree.XXXXXX") || exit 126
	d=${stage}/lib/modules/${opt_kver}
	mkdir -p "${d}/extra"
	cp "${opt_module}" "${d}/extra/${MODULE_NAME}.ko"
	echo "extra/${MODULE_NAME}.ko" >"${d}/modules.order"
	for f in modules.builtin modules.builtin.modinfo; do
		[ -r "${KERNEL%/*}/${f}" ] && cp "${KERNEL%/*}/${f}" "${d}/"
	done
	if ! warn=$(depmod -b "${stage}" "${opt_kver}" 2>&1); then
		_err "depmod failed: ${warn}"
		rm -rf "${stage}"
		exit 126
	fi
	[ -n "${warn}" ] && echo "run-vm: depmod: ${warn}" >&2
	mkdir -p "${stage}/cpio/run-vm"
	mv "${d}" "${stage}/cpio/run-vm/modtree"
	tmp=$(mktemp "${TMPDIR:-/tmp}/run-vm-modtree.XXXXXX") || exit 126
	(cd "${stage}/cpio" && find run-vm | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"${tmp}" ||
		{ rm -rf "${stage}" "${tmp}"; _err "cpio failed"; exit 126; }
	rm -rf "${stage}"
	MODTREE_CPIO=${tmp}
	MODTREE_TEMP=${tmp}
}

# The per-run part of the initramfs: run-vm/spec and run-vm/guest-init.
_build_spec()
{
	local stage=${RUNDIR}/spec-stage cwd

	cwd=$(pwd -P)
	case "${cwd}/" in
	/tmp/*|/run/*|/var/tmp/*|/dev/*|/proc/*|/sys/*)
		echo "run-vm: warning: ${cwd} is hidden in the guest by its own" \
			"tmpfs/devtmpfs/procfs; the command starts in an empty directory" >&2 ;;
	esac
	TOKEN=runvm-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
	mkdir -p "${stage}/run-vm"
	echo "${GUEST_INIT}" >"${stage}/run-vm/guest-init"
	{
		printf 'RUNVM_KVER=%q\n' "${opt_kver}"
		printf 'RUNVM_CWD=%q\n' "${cwd}"
		printf 'RUNVM_TOKEN=%q\n' "${TOKEN}"
		printf 'RUNVM_MODULE=%q\n' "${MODULE_NAME}"
		printf 'RUNVM_NDISKS=%d\n' "${#opt_disks[@]}"
		printf 'RUNVM_INJECT_WARN=%d\n' "${opt_inject_warn}"
		printf 'RUNVM_BOOT=%d\n' "${BOOT}"
		printf 'RUNVM_INJECT_BOOT_REPORT=%d\n' "${opt_inject_boot}"
		printf 'RUNVM_CMD=('
		printf ' %q' "${cmd[@]}"
		printf ' )\n'
		printf 'RUNVM_ENV=('
		[ ${#opt_env[@]} -gt 0 ] && printf ' %q' "${opt_env[@]}"
		printf ' )\n'
	} >"${stage}/run-vm/spec"
	(cd "${stage}" && find run-vm | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) \
		>"${RUNDIR}/spec.cpio" || { _err "cpio failed"; exit 126; }
	cat "${INITRAMFS}" ${MODTREE_CPIO:+"${MODTREE_CPIO}"} "${RUNDIR}/spec.cpio" \
		>"${RUNDIR}/initrd" || exit 126
}

_setup_logs()
{
	if [ -n "${opt_log}" ]; then
		mkdir -p "${opt_log}" || exit 126
		LOGDIR=$(cd "${opt_log}" && pwd)
		rm -f "${LOGDIR}"/{console,output,dmesg}.log
	else
		LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/run-vm.XXXXXX") || exit 126
		LOGDIR_TEMP=1
	fi
}

_qemu_cmdline()
{
	local i accel cpu=() append

	accel=tcg,thread=multi
	# RDRAND (which TCG emulates) seeds the kernel's RNG at boot.  Without
	# it the "crng init done" static key flips about 12 s in, while tests
	# fork, and TCG once let the other vCPU run into the int3 of that text
	# patch: "Oops: int3" in get_random_u64(), a kernel panic unrelated
	# to the module.  Seeded early, the flip happens before SMP.
	# shellcheck disable=SC2054 # a qemu option value
	cpu=(-cpu qemu64,+rdrand)

	if [ "${QCOW2_VM_KVM:-0}" = 1 ] && [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
		accel=kvm
		cpu=(-cpu host)
	fi
	# printk.devkmsg=on: /dev/kmsg writes (test marks) are not rate limited.
	# Under TCG on a busy host a vCPU can be starved for many seconds:
	# report RCU stalls after 120 s and soft lockups after 120 s (defaults
	# 21 s and 20 s) so that emulation hiccups are not taken for kernel bugs;
	# real stalls are still reported well within a test's timeout.
	append="console=ttyS0 quiet panic=-1 printk.devkmsg=on rdinit=/init"
	append+=" 8250.nr_uarts=4 i8042.noaux i8042.nokbd"
	append+=" rcupdate.rcu_cpu_stall_timeout=120 watchdog_thresh=60"
	append+=" random.trust_cpu=on"
	[ -n "${opt_append}" ] && append+=" ${opt_append}"
	# Four UARTs: ttyS0 console, ttyS1 command output, ttyS2 kernel log,
	# ttyS3 exit status.  ttyS2/ttyS3 get IRQs 5 and 7 of their own: on the
	# PC defaults (4 and 3, shared with ttyS0/ttyS1) qemu's ISA line is not
	# wired-OR, interrupts get lost, output stalls and the close of the
	# port waits 30 s and drops what was not sent (seen as lost statuses on
	# a loaded host).  The kernel takes the IRQs from qemu's ACPI tables.
	# shellcheck disable=SC2054 # commas belong to qemu option values
	QEMU=(qemu-system-x86_64 -accel "${accel}" "${cpu[@]}"
		-m "${opt_mem}" -smp "${opt_cpus}"
		-nodefaults -display none -monitor none -no-reboot
		-kernel "${KERNEL}" -initrd "${RUNDIR}/initrd" -append "${append}"
		-chardev "file,id=ser0,path=${LOGDIR}/console.log"
		-device isa-serial,chardev=ser0,index=0,iobase=0x3f8,irq=4
		-chardev "file,id=ser1,path=${LOGDIR}/output.log"
		-device isa-serial,chardev=ser1,index=1,iobase=0x2f8,irq=3
		-chardev "file,id=ser2,path=${LOGDIR}/dmesg.log"
		-device isa-serial,chardev=ser2,index=2,iobase=0x3e8,irq=5
		-chardev "file,id=ser3,path=${RUNDIR}/status"
		-device isa-serial,chardev=ser3,index=3,iobase=0x2e8,irq=7
		-virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap)
	for ((i = 0; i < ${#opt_disks[@]}; i++)); do
		QEMU+=(-drive "file=${RUNDIR}/disk${i}.raw,format=raw,if=none,id=disk${i},cache=writeback,aio=threads,discard=unmap"
		       -device "virtio-blk-pci,drive=disk${i},serial=runvm-disk${i}")
	done
}

_create_disks()
{
	local i

	for ((i = 0; i < ${#opt_disks[@]}; i++)); do
		truncate -s "${opt_disks[i]}" "${RUNDIR}/disk${i}.raw" 2>/dev/null ||
			_usage_err "bad --disk size '${opt_disks[i]}'"
	done
}

# Kernel report lines from the kernel log, and kernel-format lines (with a
# "[ time]" prefix) from the console, which still has a panic when the log
# copy did not get it out.
_kernel_reports()
{
	{
		tr -d '\r' <"${LOGDIR}/dmesg.log" 2>/dev/null
		tr -d '\r' <"${LOGDIR}/console.log" 2>/dev/null | grep -a '^\[ *[0-9]*\.[0-9]*\]'
	} | grep -aE "${KERNEL_REPORT_RE}" | awk '!seen[$0]++'
}

# The kernel report lines logged after the guest's boot mark (_boot_mark in
# guest-init.sh: the module is loaded and COMMAND started after it).  Each
# copy of the log is in log order, so all of a copy without the mark came
# before it.
_reports_after_mark()
{
	local mark="run-vm: ${TOKEN} booted"

	{
		tr -d '\r' <"${LOGDIR}/dmesg.log" 2>/dev/null |
			awk -v m="${mark}" 'after; index($0, m) { after = 1 }'
		tr -d '\r' <"${LOGDIR}/console.log" 2>/dev/null | grep -a '^\[ *[0-9]*\.[0-9]*\]' |
			awk -v m="${mark}" 'after; index($0, m) { after = 1 }'
	} | grep -aE "${KERNEL_REPORT_RE}"
}

_run()
{
	local start end rc status reports timed_out=0

	start=$(date +%s.%N)
	"${QEMU[@]}" </dev/null >"${RUNDIR}/qemu.out" 2>&1 &
	QEMU_PID=$!
	: >>"${LOGDIR}/output.log"
	tail -n +1 -s 0.2 -F --pid="${QEMU_PID}" "${LOGDIR}/output.log" 2>/dev/null &
	TAIL_PID=$!

	# Wait for qemu, at most --timeout seconds.
	local deadline=$((SECONDS + opt_timeout))
	while kill -0 "${QEMU_PID}" 2>/dev/null; do
		if [ "${SECONDS}" -ge "${deadline}" ]; then
			timed_out=1
			kill -TERM "${QEMU_PID}" 2>/dev/null
			sleep 2
			kill -KILL "${QEMU_PID}" 2>/dev/null
			break
		fi
		sleep 0.2
	done
	wait "${QEMU_PID}" 2>/dev/null
	rc=$?
	QEMU_PID=""
	wait "${TAIL_PID}" 2>/dev/null
	TAIL_PID=""
	end=$(date +%s.%N)
	_info "qemu ran for $(awk -v a="${start}" -v b="${end}" 'BEGIN { printf "%.1f", b - a }') s"

	status=$(tr -d '\r' <"${RUNDIR}/status" 2>/dev/null | sed -n 's/^RUNVM_STATUS=//p' | tail -n 1)
	if [ -z "${status}" ]; then
		# Fallback: the same status, printed by the kernel on the console.
		status=$(tr -d '\r' <"${LOGDIR}/console.log" 2>/dev/null |
			sed -n "s/.*run-vm: ${TOKEN} status \([^ ]*\)$/\1/p" | tail -n 1)
		[ -n "${status}" ] && _info "status taken from the console (ttyS3 had none)"
	fi
	reports=$(_kernel_reports)

	if [ -n "${reports}" ] && [ "${BOOT}" = 1 ] && [ -z "$(_reports_after_mark)" ]; then
		printf 'run-vm: boot-time kernel report: %s\n' "${reports}" >&2
		BOOT_AGAIN=1
		return 125
	fi
	if [ -n "${reports}" ]; then
		printf 'run-vm: kernel report: %s\n' "${reports}" >&2
		[ "${timed_out}" = 1 ] && _err "also: timed out after ${opt_timeout} s"
		_err "kernel log has reports (command status: ${status:-none}); exit 125"
		return 125
	fi
	if [ "${timed_out}" = 1 ]; then
		_err "timeout: the guest did not finish within ${opt_timeout} s"
		return 124
	fi
	case "${status}" in
	[0-9]|[0-9][0-9]|[0-9][0-9][0-9])
		return "${status}" ;;
	module)
		_err "the module ${opt_module} did not load (see above and ${LOGDIR}/dmesg.log)"
		return 126 ;;
	"")
		_err "the guest did not report a status (qemu exit ${rc}); console:"
		tail -n 20 "${LOGDIR}/console.log" >&2
		[ -s "${RUNDIR}/qemu.out" ] && sed 's/^/run-vm: qemu: /' "${RUNDIR}/qemu.out" >&2
		return 126 ;;
	*)
		_err "guest failure '${status}' (see ${LOGDIR}/console.log)"
		return 126 ;;
	esac
}

_main()
{
	local rc

	_parse_args "$@"
	_check_host
	trap _cleanup EXIT
	trap _on_signal INT TERM HUP
	_build_initramfs
	_build_modtree
	RUNDIR=$(mktemp -d /dev/shm/run-vm.XXXXXX 2>/dev/null ||
		mktemp -d "${TMPDIR:-/tmp}/run-vm.XXXXXX") || exit 126
	_create_disks
	_setup_logs
	BOOT=1
	BOOT_AGAIN=0
	_build_spec
	_qemu_cmdline
	_info "qemu command line: ${QEMU[*]}"
	_run
	rc=$?
	[ "${BOOT_AGAIN}" = 1 ] || return "${rc}"
	# Boot 1 cannot have touched the disks: nothing opened them for writing
	# before the mark.
	echo "run-vm: booting again: the kernel reported the lines above before" \
		"the module was loaded and the command started" >&2
	mkdir -p "${LOGDIR}/boot1" &&
		mv "${LOGDIR}"/{console,output,dmesg}.log "${LOGDIR}/boot1/" 2>/dev/null
	BOOT=2
	rm -f "${RUNDIR}/status"
	_build_spec
	_run
}

_main "$@"
