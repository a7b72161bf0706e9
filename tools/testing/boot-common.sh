# shellcheck shell=bash
# SPDX-License-Identifier: GPL-2.0
#
# boot-common.sh: shared by check-boot.sh and check-systemd-boot.sh (sourced
# from the top of the tree): TAP helpers, the default kernel, the kernel
# report pattern and the prerequisite checks.  The script sets $tmp to its
# work directory; BOOT_KEEP=1 keeps it (it is also kept on failure).  A
# script may define boot_cleanup, run by boot_finish before the work files
# are removed.  Needs $top (the top of the tree).
# shellcheck disable=SC2034,SC2154 # report_re is used, $top set by the scripts

# Same list as tools/testing/vm/run-vm.sh.
report_re='Oops|BUG:|WARNING:|possible circular locking|possible recursive locking|inconsistent lock state|INFO: trying to register non-static key|suspicious RCU usage|KASAN|UBSAN|kmemleak|blocked for more than|Kernel panic|general protection fault|Call Trace:'

n=0 pass=0 fail=0 skip=0
t0=$SECONDS
tmp=""
ok() { n=$((n + 1)); pass=$((pass + 1)); echo "ok $n - $1"; }
nok() { n=$((n + 1)); fail=$((fail + 1)); echo "not ok $n - $1"; }
skp() { n=$((n + 1)); skip=$((skip + 1)); echo "ok $n - $1 # SKIP $2"; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else nok "$what"; fi; }
# Indent a file's last lines as TAP diagnostics.
diag() { tail -n "${2:-20}" "$1" 2>/dev/null | sed 's/^/#   /'; }

# boot_kver [KVER]: the kernel to boot, by default the 6.12 one.
boot_kver()
{
	local k v=${1:-}

	if [ -z "$v" ]; then
		for k in $(tools/testing/kvers.sh); do
			case "$k" in 6.12.*) v=$k ;; esac
		done
	fi
	echo "$v"
}

boot_finish()
{
	if declare -F boot_cleanup >/dev/null; then
		boot_cleanup
	fi
	echo "1..$n"
	echo "# $((SECONDS - t0)) s"
	if [ -n "$tmp" ]; then
		if [ "${BOOT_KEEP:-0}" = 1 ] || [ "$fail" != 0 ]; then
			echo "# work files kept in $tmp"
		else
			rm -rf "$tmp"
		fi
	fi
	echo "$pass passed, $fail failed, $skip skipped"
	[ "$fail" = 0 ]
	exit
}

# boot_require WHAT WHY_ROOT CMD...: skip WHAT (and finish) without the
# kernel image $kver, one of the commands, or root (WHY_ROOT says for what).
boot_require()
{
	local what=$1 why_root=$2 c missing=""

	shift 2
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 || missing="$missing $c"
	done
	if [ -z "$kver" ] || [ ! -e "/boot/vmlinuz-$kver" ]; then
		skp "$what" "no kernel image /boot/vmlinuz-${kver:-(6.12)}"
		boot_finish
	elif [ -n "$missing" ]; then
		skp "$what" "missing:$missing (tools/setup-deps.sh)"
		boot_finish
	elif [ "$(id -u)" != 0 ]; then
		skp "$what" "needs root ($why_root)"
		boot_finish
	fi
}

# boot_build_module: build/$kver/dm-qcow2.ko into $ko, or fail and finish.
boot_build_module()
{
	ko=$top/build/$kver/dm-qcow2.ko
	if ! make -s KVER="$kver" modules >"$tmp/build.log" 2>&1 || [ ! -f "$ko" ]; then
		nok "module builds for $kver"
		diag "$tmp/build.log"
		boot_finish
	fi
	ok "module builds for $kver"
}

# boot_check_image LABEL IMG RAW LOG: the qcow2 image IMG after a boot:
# qemu-img check clean, neither dirty nor corrupt, converted to RAW by QEMU
# and holding a clean ext4 (LOG.* keep the tools' output).  Fails if the
# image could not be converted (the caller's checks of RAW cannot run).
boot_check_image()
{
	local label=$1 img=$2 raw=$3 log=$4 info fsck_rc

	if qemu-img check "$img" >"$log.check" 2>&1; then
		ok "$label: qemu-img check clean"
	else
		nok "$label: qemu-img check clean"
		diag "$log.check"
	fi
	info=$(qemu-img info --output=json "$img" 2>&1)
	if grep -q '"dirty-flag": false' <<<"$info" && grep -q '"corrupt": false' <<<"$info"; then
		ok "$label: qemu-img info: not dirty, not corrupt"
	else
		nok "$label: qemu-img info: not dirty, not corrupt"
		printf '%s\n' "$info" | sed 's/^/#   /'
	fi
	if ! qemu-img convert -f qcow2 -O raw "$img" "$raw" >"$log.convert" 2>&1; then
		nok "$label: image read back through QEMU"
		diag "$log.convert"
		return 1
	fi
	e2fsck -fn "$raw" >"$log.fsck" 2>&1
	fsck_rc=$?
	check "$label: ext4 in the image clean (e2fsck -fn: $fsck_rc)" [ "$fsck_rc" = 0 ]
	[ "$fsck_rc" = 0 ] || diag "$log.fsck"
	return 0
}
