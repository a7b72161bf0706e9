#!/bin/busybox sh
# SPDX-License-Identifier: GPL-2.0
# shellcheck shell=dash
#
# /init of the run-vm.sh initramfs (busybox sh, PID 1).  run-vm.sh copies this
# file into the cached initramfs; its checksum is part of the cache key.
#
# Everything that only needs mounting is done here, with the static busybox
# held in RAM: under TCG every exec of a dynamic binary from the 9p root costs
# about 0.1 s, an applet from here a few ms.
#
#  1. insmod the virtio/9p/overlay modules listed in /modules/order (run-vm.sh
#     decompressed them, busybox insmod cannot read .ko.xz);
#  2. mount the host root read-only over 9p on /newroot;
#  3. mount tmpfs on /run, /tmp, /var/tmp, /dev/shm, devpts, debugfs, and an
#     overlay (tmpfs upper) on /var/lib, create /run/lock and /dev/fd;
#  4. copy the per-run description /run-vm (spec, module tree) to /run/run-vm;
#  5. with a module tree: bind-mount the stock /lib/modules/KVER on
#     /run/run-vm/stock and the tree (modules.* from depmod, extra/*.ko and
#     symlinks into ../stock for everything else) over /lib/modules/KVER;
#  6. create the static device nodes of modules.devname (/dev/loop-control,
#     /dev/mapper/control, ...), whose opening autoloads the module;
#  7. put the serial ports for output, kernel log and status in raw mode;
#  8. switch_root and exec guest-init.sh (path in /run-vm/guest-init) with
#     bash from the host root.
#
# Any failure powers the guest off without a status; run-vm.sh then reports
# an infrastructure failure and shows the console.

bb=/bin/busybox
R=/newroot

$bb mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys

fail()
{
	echo "run-vm initramfs: error: $*"
	$bb poweroff -f
	$bb sleep 60
}

while read -r m; do
	[ -n "$m" ] || continue
	$bb insmod "/modules/$m" || fail "insmod $m failed"
done </modules/order

$bb mkdir -p $R
$bb mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 \
	hostroot $R || fail "cannot mount the host root over 9p"
[ -d /run-vm ] || fail "no /run-vm in the initramfs"
read -r gi </run-vm/guest-init
[ -r "$R$gi" ] || fail "guest init $gi is not visible in the host root"

for p in 1 2 3; do
	$bb stty -F /dev/ttyS$p raw -echo 115200 || fail "stty ttyS$p failed"
done

$bb mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs $R/run || fail "tmpfs on /run"
$bb cp -a /run-vm $R/run/run-vm || fail "cannot copy /run-vm"
$bb mkdir -p $R/run/lock $R/run/udev $R/run/mount $R/run/user
$bb chmod 1777 $R/run/lock

$bb mount --move /dev $R/dev || fail "cannot move /dev"
$bb mount --move /proc $R/proc || fail "cannot move /proc"
$bb mount --move /sys $R/sys || fail "cannot move /sys"

for d in /tmp /var/tmp /dev/shm; do
	$bb mkdir -p $R$d
	$bb mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $R$d || fail "tmpfs on $d"
done
$bb mkdir -p $R/dev/pts
$bb mount -t devpts -o mode=0620,ptmxmode=0666,gid=5 devpts $R/dev/pts || fail "devpts"
$bb mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
$bb mount -t configfs configfs $R/sys/kernel/config 2>/dev/null
$bb ln -sfn /proc/self/fd $R/dev/fd
$bb ln -sfn /proc/self/fd/0 $R/dev/stdin
$bb ln -sfn /proc/self/fd/1 $R/dev/stdout
$bb ln -sfn /proc/self/fd/2 $R/dev/stderr

# /var/lib: keep the host's files visible when overlayfs accepts the 9p lower
# layer, else an empty tmpfs.
v=$R/run/run-vm/varlib
$bb mkdir -p $v/upper $v/work
$bb mount -t overlay -o lowerdir=$R/var/lib,upperdir=$v/upper,workdir=$v/work \
	run-vm-varlib $R/var/lib 2>/dev/null ||
	$bb mount -t tmpfs -o mode=0755 tmpfs $R/var/lib || fail "tmpfs on /var/lib"

kver=$($bb uname -r)
if [ -d $R/run/run-vm/modtree ] && [ ! -d "$R/lib/modules/$kver" ]; then
	# A kernel with no module tree on the host (run-vm.sh --kernel): the
	# tree is just the module under test, on a tmpfs over /lib/modules.
	$bb mount -t tmpfs -o mode=0755 tmpfs $R/lib/modules || fail "tmpfs on /lib/modules"
	$bb mkdir -p "$R/lib/modules/$kver"
	$bb mount --bind $R/run/run-vm/modtree "$R/lib/modules/$kver" ||
		fail "cannot bind-mount the module tree"
elif [ -d $R/run/run-vm/modtree ]; then
	$bb mkdir -p $R/run/run-vm/stock
	$bb mount --bind "$R/lib/modules/$kver" $R/run/run-vm/stock ||
		fail "cannot bind-mount /lib/modules/$kver"
	$bb mount --bind $R/run/run-vm/modtree "$R/lib/modules/$kver" ||
		fail "cannot bind-mount the module tree"
fi

# Static nodes for on-demand module loading (what kmod static-nodes and
# systemd-tmpfiles do at boot): opening /dev/loop-control loads loop, etc.
# (None without a module tree: then devtmpfs has the built-in drivers' nodes.)
devname=$R/lib/modules/$kver/modules.devname
[ -r "$devname" ] || devname=$R/dev/null
while read -r mod node spec; do
	case "$mod" in ''|\#*) continue ;; esac
	[ -e "$R/dev/$node" ] && continue
	t=${spec%"${spec#?}"}
	mm=${spec#?}
	case "$node" in */*) $bb mkdir -p "$R/dev/${node%/*}" ;; esac
	$bb mknod -m 0600 "$R/dev/$node" "$t" "${mm%:*}" "${mm#*:}" 2>/dev/null
done <"$devname"

exec $bb switch_root $R /bin/bash "$gi"
