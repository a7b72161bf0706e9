#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_boot_root.sh - boot a root file system from a qcow2 image through the
# initramfs-tools hook and local-top script of tools/initramfs/.
#
# Booting a nested VM under TCG would take many minutes, so the "boot" is
# done in a PID and mount namespace of the test VM instead, with the real
# pieces wherever possible:
#
#  1. a root file system with a small busybox userland (busybox-static of the
#     host) whose /sbin/init remounts / read-write, writes a marker file,
#     prints a line and powers off (busybox poweroff -f: in a PID namespace
#     reboot(2) ends the namespace, its init dying of SIGINT), made with
#     mkfs.ext4 -d, stored as a qcow2 overlay over a qcow2 base on an ext4
#     file system of a spare disk;
#  2. a real initramfs built by mkinitramfs (initramfs-tools of the host)
#     with the hook and the local-top script from tools/initramfs/ in a
#     private configuration directory (MODULES=list, so it only holds what
#     the hooks add); its content is checked (qcow2setup, libdevmapper,
#     dm-qcow2.ko, loop, the script and the boot order);
#  3. the initramfs unpacked on a tmpfs and started in
#     `unshare --mount --pid --fork` (so its init is PID 1 of the namespace)
#     with a fake /proc/cmdline holding "qcow2root=/dev/vda:/images/...,
#     name=..." and root=/dev/mapper/NAME, guest /dev (devtmpfs: the same
#     nodes) and the guest's /run/udev, so that the initramfs' udevadm and
#     libdevmapper talk to the guest's udevd.  Its /init is NOT the real
#     initramfs-tools /init (that one starts udevd, probes hardware and
#     parses the VM's own command line); BOOT_INIT below stands in for it,
#     doing only what that init does around mounting root: set the boot
#     variables from the command line, source the real /scripts/functions
#     and /scripts/local of the initramfs, call mountroot (which runs
#     /scripts/local-top, so the script under test, waits for root= and
#     mounts it), move /dev, /run, /sys, /proc into the root and exec
#     run-init (klibc's, from the initramfs), which starts /sbin/init of
#     the image.  panic() is replaced by one that prints and exits (the
#     real one opens a shell on the console);
#  4. after the namespace ended: the device is closed with qcow2setup, the
#     image passes `qemu-img check`, the marker the image's init wrote is
#     in the image as QEMU reads it (qemu-img convert, debugfs), the base
#     image is unchanged;
#  5. the same with the image on a block device (qcow2root=/dev/vdb,ro, no
#     root=: the script sets ROOT), read-only: the init sees a read-only
#     root, the device is unchanged;
#  6. a qcow2root= naming a missing file: the script reports it and the
#     boot stops at the wait for root= (~30 s, initramfs-tools' minimum),
#     with nothing left mapped.
#
# Measured in the TCG test VM (2 vCPUs, host shared with other VMs): 4-6.5
# min on 6.1 and 6.12, of which mkinitramfs takes 2.5-4.5 min (hundreds of
# short processes: the hooks of the host's initramfs-tools all run) and the
# failing boot ~35 s (initramfs-tools waits 30 s for root=).
#
# Needs root, the module, the tool built on the host, mkinitramfs,
# busybox (static), qemu-img, mkfs.ext4, debugfs, unshare and two spare
# disks (run-vm.sh --disk 1G --disk 1G).

# shellcheck disable=SC2317,SC2016 # functions called indirectly; scripts for the guest in single quotes
. "$(dirname "$0")/test_common.sh"

TOP=$(cd "$(dirname "$0")/../.." && pwd)
Q2S=${QCOW2SETUP:-$TOP/tools/qcow2setup/qcow2setup}
HOOK=$TOP/tools/initramfs/hooks/qcow2setup
LOCALTOP=$TOP/tools/initramfs/scripts/local-top/qcow2setup
[ -x "$Q2S" ] || _skip "qcow2setup is not built ($Q2S): run 'make -C tools/qcow2setup' on the host"
{ [ -f "$HOOK" ] && [ -f "$LOCALTOP" ]; } || _fail "no $HOOK or $LOCALTOP"
_require_root
_require_cmd qemu-img mkfs.ext4 debugfs unshare mkinitramfs unmkinitramfs cpio busybox md5sum
_require_module
BUSYBOX=$(command -v busybox)
file -L "$BUSYBOX" 2>/dev/null | grep -q 'dynamically linked' &&
	_skip "$BUSYBOX is not static (install busybox-static)"
DISK1=$(_disk 1) || exit
DISK2=$(_disk 2) || exit
KVER=$(uname -r)
# mkinitramfs needs the packaged kernel's config and modules (a kernel
# built by `make check-debug` has neither; this test's subject, the
# initramfs hook, does not depend on the kernel).
[ -f "/boot/config-$KVER" ] ||
	_skip "no /boot/config-$KVER: not a packaged kernel, mkinitramfs cannot build for it"

WORK=$(_scratch_dir)
[ -d "$WORK" ] || _fail "no scratch directory"
P="q2br$$"
HOSTMNT=$WORK/host
TOKEN="boot-$$-$RANDOM$RANDOM"
mkdir -p "$HOSTMNT"

_br_cleanup()
{
	local n
	for n in $(dmsetup ls 2>/dev/null | awk -v p="$P" 'index($1, p) == 1 { print $1 }'); do
		"$Q2S" close --force "$n" >/dev/null 2>&1 || dmsetup remove --retry "$n" >/dev/null 2>&1
	done
	mountpoint -q "$HOSTMNT" && umount "$HOSTMNT"
	return 0
}
_on_exit _br_cleanup

# /sbin/init of the image (busybox sh)
ROOT_INIT='#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc 2>/dev/null
if mount -o remount,rw / 2>/dev/null; then
	mode=rw
	echo "qcow2 root booted: TOKEN pid $$" >/boot-marker
	sync
else
	mode=ro
fi
echo "qcow2 root init: TOKEN pid $$ root $mode $(cat /etc/image-id)"
mount -o remount,ro / 2>/dev/null
poweroff -f
echo "qcow2 root init: poweroff failed"
exit 1
'

# Stand-in for initramfs-tools' /init (see the header).  Runs as PID 1 of
# the namespace, chrooted into the unpacked initramfs.
BOOT_INIT='#!/bin/sh
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mkdir -p /var/lock /conf/conf.d /root
export quiet=n rootmnt=/root ROOT= ROOTDELAY= ROOTFLAGS= ROOTFSTYPE= readonly=y
export init=/sbin/init panic= debug= break= drop_caps= IP= BOOT=local UBIMTD=
export fastboot=n forcefsck=n fsckfix= MODPROBE_OPTIONS=-qb resume= noresume=y
starttime=$(( $(cut -d. -f1 /proc/uptime) + 1 ))
export starttime
for x in $(cat /proc/cmdline); do
	case $x in
	root=*) ROOT=${x#root=} ;;
	rootdelay=*) ROOTDELAY=${x#rootdelay=} ;;
	ro) readonly=y ;;
	rw) readonly=n ;;
	esac
done
. /conf/initramfs.conf
for conf in /conf/conf.d/*; do [ -f "$conf" ] && . "$conf"; done
. /scripts/functions
panic() { echo "boot-init: PANIC: $*"; exit 1; }
. /scripts/local
echo "boot-init: mountroot, ROOT=${ROOT:-(none)}"
mountroot
[ -e /conf/param.conf ] && . /conf/param.conf
echo "boot-init: root is $ROOT"
[ -x "$rootmnt$init" ] || panic "no $init on the root file system"
for d in dev run sys proc; do
	mount -n -o move /$d $rootmnt/$d || panic "cannot move /$d"
done
exec run-init "$rootmnt" "$init"
'

# Inside the namespace (PID 1), before the chroot: the mounts initramfs-tools'
# init or the kernel would make.  $1 = unpacked initramfs (copied onto a new
# tmpfs here), $2 = file with the command line.
NS_PREP='set -e
src=$1 cmdline=$2 r=$3
mkdir -p $r
mount -t tmpfs -o mode=0755 rootfs $r
cp -a "$src"/. $r/
mkdir -p $r/dev $r/proc $r/sys $r/run $r/tmp
mount -t devtmpfs devtmpfs $r/dev
mount -t proc proc $r/proc
mount --bind "$cmdline" $r/proc/cmdline
mount -t sysfs sysfs $r/sys
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs $r/run
mkdir -p $r/run/udev
mount --bind /run/udev $r/run/udev
exec chroot $r /bin/sh /boot-init
'

# _boot CMDLINE: start the unpacked initramfs in a new namespace; output in
# $WORK/boot.log, exit status in BOOT_RC.
_boot()
{
	printf '%s\n' "$1" >"$WORK/cmdline"
	unshare --mount --pid --fork --propagation private \
		bash -c "$NS_PREP" ns-prep "$WORK/initrd" "$WORK/cmdline" "$WORK/nsroot" \
		>"$WORK/boot.log" 2>&1 </dev/null
	BOOT_RC=$?
	_diag "boot log (exit $BOOT_RC; repeated lines once):"
	uniq "$WORK/boot.log" | sed 's/^/#   /'
}

# _close NAME: close, retrying while the ended namespace lets go of the
# file system (its last reference is dropped after the processes exit).
_close()
{
	local out
	for _ in $(seq 50); do
		out=$("$Q2S" close "$1" 2>&1) && return 0
		grep -qi 'in use\|busy' <<<"$out" || break
		sleep 0.2
	done
	_diag "qcow2setup close $1: $out"
	return 1
}

_nothing_left()
{
	local n rc=0
	for n in $(dmsetup ls 2>/dev/null | awk -v p="$P" 'index($1, p) == 1 { print $1 }'); do
		_diag "device $n left behind"
		rc=1
	done
	return $rc
}

# ---------------------------------------------------------------------------

t_images()
{
	local rd=$WORK/rootdir a
	mkdir -p "$rd"/{bin,sbin,etc,proc,sys,dev,run,tmp,root} || return 1
	cp "$BUSYBOX" "$rd/bin/busybox" || return 1
	for a in sh mount umount echo cat sync poweroff mkdir ls; do
		ln -s busybox "$rd/bin/$a"
	done
	ln -s ../bin/poweroff "$rd/sbin/poweroff"
	printf '%s' "${ROOT_INIT//TOKEN/$TOKEN}" >"$rd/sbin/init"
	chmod 755 "$rd/sbin/init"
	echo "qcow2-root-image $TOKEN" >"$rd/etc/image-id"
	truncate -s 32M "$WORK/root.raw" &&
	mkfs.ext4 -q -F -L q2root -d "$rd" "$WORK/root.raw" || return 1

	# a spare disk with ext4 holding base.qcow2 <- root.qcow2 (relative)
	mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1 "$DISK1" >/dev/null || return 1
	mount "$DISK1" "$HOSTMNT" || return 1
	mkdir -p "$HOSTMNT/images" &&
	qemu-img convert -O qcow2 "$WORK/root.raw" "$HOSTMNT/images/base.qcow2" &&
	qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$HOSTMNT/images/root.qcow2" || return 1
	md5sum <"$HOSTMNT/images/base.qcow2" >"$WORK/base.md5"
	umount "$HOSTMNT" || return 1

	# the second disk holds a qcow2 image itself (a file copied onto it)
	qemu-img convert -O qcow2 "$WORK/root.raw" "$WORK/dev.qcow2" || return 1
	dd if="$WORK/dev.qcow2" of="$DISK2" bs=1M conv=fsync status=none || return 1
	md5sum <"$DISK2" >"$WORK/disk2.md5"
}

t_mkinitramfs()
{
	local conf=$WORK/conf rc=0 f t0=$SECONDS
	mkdir -p "$conf"/{hooks,scripts/local-top,conf.d} || return 1
	install -m 755 "$HOOK" "$conf/hooks/qcow2setup" &&
	install -m 755 "$LOCALTOP" "$conf/scripts/local-top/qcow2setup" || return 1
	printf 'MODULES=list\nBUSYBOX=y\nCOMPRESS=gzip\n' >"$conf/initramfs.conf"
	: >"$conf/modules"
	if ! QCOW2SETUP=$Q2S mkinitramfs -d "$conf" -o "$WORK/initrd.img" "$KVER" >"$WORK/mkinitramfs.log" 2>&1; then
		_diag "mkinitramfs failed:" "$(tail -20 "$WORK/mkinitramfs.log")"
		return 1
	fi
	_diag "mkinitramfs: $((SECONDS - t0)) s, $(stat -c %s "$WORK/initrd.img") bytes"
	grep -v '^$' "$WORK/mkinitramfs.log" | head -5 | sed 's/^/# /'
	mkdir -p "$WORK/unpack"
	unmkinitramfs "$WORK/initrd.img" "$WORK/unpack" || { _diag "unmkinitramfs failed"; return 1; }
	# an initramfs with an early (microcode) part unpacks into main/
	if [ -d "$WORK/unpack/main" ]; then
		mv "$WORK/unpack/main" "$WORK/initrd"
	else
		mv "$WORK/unpack" "$WORK/initrd"
	fi
	for f in usr/sbin/qcow2setup scripts/local-top/qcow2setup usr/sbin/run-init \
		"usr/lib/modules/$KVER/modules.dep" usr/lib/udev/rules.d/55-dm.rules; do
		[ -e "$WORK/initrd/$f" ] || { _diag "initramfs lacks $f"; rc=1; }
	done
	for f in 'libdevmapper.so.*' 'dm-qcow2.ko*'; do
		[ -n "$(find "$WORK/initrd" -name "$f" | head -1)" ] || { _diag "initramfs lacks $f"; rc=1; }
	done
	if grep -q 'CONFIG_BLK_DEV_LOOP=m' "/boot/config-$KVER" 2>/dev/null; then
		[ -n "$(find "$WORK/initrd" -name 'loop.ko*' | head -1)" ] || { _diag "initramfs lacks loop.ko"; rc=1; }
	fi
	grep -q '^/scripts/local-top/qcow2setup' "$WORK/initrd/scripts/local-top/ORDER" ||
		{ _diag "local-top ORDER: $(cat "$WORK/initrd/scripts/local-top/ORDER")"; rc=1; }
	chroot "$WORK/initrd" /usr/sbin/qcow2setup --version >/dev/null ||
		{ _diag "qcow2setup does not run inside the initramfs"; rc=1; }
	printf '%s' "$BOOT_INIT" >"$WORK/initrd/boot-init"
	return $rc
}

t_boot_file()
{
	local rc=0 n=${P}r out
	_boot "console=ttyS0 root=/dev/mapper/$n ro qcow2root=$DISK1:/images/root.qcow2,name=$n"
	# poweroff in a PID namespace: the namespace's init dies of SIGINT
	[ "$BOOT_RC" = 130 ] || { _diag "namespace exit status $BOOT_RC, expected 130 (poweroff)"; rc=1; }
	grep -q "^qcow2 root init: $TOKEN pid 1 root rw qcow2-root-image $TOKEN\$" "$WORK/boot.log" ||
		{ _diag "no line from the image's init (pid 1, rw)"; rc=1; }
	grep -q "Begin: qcow2setup: opening /run/qcow2setup/host/$n/images/root.qcow2 as /dev/mapper/$n" \
		"$WORK/boot.log" || { _diag "the local-top script did not open the image"; rc=1; }
	if dmsetup info "$n" >/dev/null 2>&1; then
		dmsetup table "$n" | grep -q ' qcow2 .* 3 backing qcow2 ' ||
			{ _diag "table: $(dmsetup table "$n")"; rc=1; }
		_close "$n" || rc=1
	else
		_diag "/dev/mapper/$n does not exist after the boot"
		rc=1
	fi
	_nothing_left || rc=1
	mount "$DISK1" "$HOSTMNT" || return 1
	out=$(qemu-img check "$HOSTMNT/images/root.qcow2" 2>&1) ||
		{ _diag "qemu-img check:" "$out"; rc=1; }
	md5sum <"$HOSTMNT/images/base.qcow2" | cmp -s - "$WORK/base.md5" ||
		{ _diag "the base image changed"; rc=1; }
	qemu-img convert -O raw "$HOSTMNT/images/root.qcow2" "$WORK/after.raw" || rc=1
	out=$(debugfs -R 'cat /boot-marker' "$WORK/after.raw" 2>/dev/null)
	[ "$out" = "qcow2 root booted: $TOKEN pid 1" ] ||
		{ _diag "marker in the image: '$out'"; rc=1; }
	umount "$HOSTMNT"
	rm -f "$WORK/after.raw"
	return $rc
}

t_boot_blockdev_ro()
{
	local rc=0 n=${P}d
	_boot "console=ttyS0 qcow2root=$DISK2,name=$n,ro,cache-size=1M"
	[ "$BOOT_RC" = 130 ] || { _diag "namespace exit status $BOOT_RC, expected 130 (poweroff)"; rc=1; }
	grep -q "^boot-init: root is /dev/mapper/$n\$" "$WORK/boot.log" ||
		{ _diag "ROOT was not set to /dev/mapper/$n"; rc=1; }
	grep -q "^qcow2 root init: $TOKEN pid 1 root ro qcow2-root-image $TOKEN\$" "$WORK/boot.log" ||
		{ _diag "no line from the image's init (pid 1, ro)"; rc=1; }
	if dmsetup info "$n" >/dev/null 2>&1; then
		dmsetup table "$n" | grep -q ' cache_size 1048576$' || { _diag "table: $(dmsetup table "$n")"; rc=1; }
		[ "$(blockdev --getro "/dev/mapper/$n")" = 1 ] || { _diag "not read-only"; rc=1; }
		_close "$n" || rc=1
	else
		_diag "/dev/mapper/$n does not exist after the boot"
		rc=1
	fi
	_nothing_left || rc=1
	md5sum <"$DISK2" | cmp -s - "$WORK/disk2.md5" || { _diag "$DISK2 changed"; rc=1; }
	return $rc
}

t_boot_missing()
{
	local rc=0 n=${P}m
	_boot "console=ttyS0 root=/dev/mapper/$n qcow2root=$DISK1:/images/nothere.qcow2,name=$n"
	[ "$BOOT_RC" = 1 ] || { _diag "namespace exit status $BOOT_RC, expected 1 (panic)"; rc=1; }
	grep -q "Failure: qcow2setup: no image file /images/nothere.qcow2 on $DISK1" "$WORK/boot.log" ||
		{ _diag "no failure message from the script"; rc=1; }
	grep -q "boot-init: PANIC: ALERT!  /dev/mapper/$n does not exist" "$WORK/boot.log" ||
		{ _diag "the boot did not stop at the wait for root="; rc=1; }
	grep -q "qcow2 root init" "$WORK/boot.log" && { _diag "the image's init ran"; rc=1; }
	_nothing_left || rc=1
	return $rc
}

# ---------------------------------------------------------------------------

# The boots need the images and the initramfs.
subtest_gate()
{
	case $1 in
	t_images | t_mkinitramfs) return "$2" ;;
	esac
	return 0
}

TESTS="t_images t_mkinitramfs t_boot_file t_boot_blockdev_ro t_boot_missing"
ktap_header
ktap_plan "$(wc -w <<<"$TESTS")"
# shellcheck disable=SC2086
ktap_run_subtests boot_root $TESTS
ktap_finish
