#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# check-boot.sh [KVER]: boot a VM from a qcow2 root image through dm-qcow2,
# with the initramfs-tools hook and local-top script of tools/initramfs/, in
# TAP, ending with "N passed, N failed, N skipped".  KVER defaults to the
# 6.12 kernel of tools/testing/kvers.sh.
#
# On the host (nothing is installed: the host's /etc/initramfs-tools,
# /lib/modules and /usr/sbin are not touched):
#   1. builds the module (make KVER=KVER modules -> build/KVER/dm-qcow2.ko)
#      and qcow2setup (make -C tools/qcow2setup);
#   2. makes an initramfs for KVER with Debian's mkinitramfs and a private
#      configuration directory (-d: MODULES=list with virtio_blk and ext4,
#      the hook in hooks/, the script in scripts/local-top/).  The hook
#      takes the built tool from $QCOW2SETUP and the built module from
#      $QCOW2_MODULE (see tools/initramfs/hooks/qcow2setup);
#   3. makes the root image: a static busybox userland in an ext4 file
#      system (mkfs.ext4 -d), converted to qcow2 with qemu-img.  Its
#      /sbin/init mounts /proc and /sys, reads a file the host put into the
#      image, writes /data (random) and /marker (a nonce from the kernel
#      command line, the root device, whether dm_qcow2 is loaded and the
#      checksums of both files), syncs, remounts / read-only, prints a
#      marker line on the console and powers off (poweroff -f);
#   4. boots qemu-system-x86_64 (TCG, 512 MiB, one CPU, the host's
#      /boot/vmlinuz-KVER and that initramfs, console on a serial file,
#      -no-reboot, panic=-1, timeout $BOOT_TIMEOUT s, default 300) with
#      root=/dev/mapper/root and qcow2root=... naming the image on a raw
#      virtio disk, in two cases (BOOT_CASES, default "file disk"; set
#      but empty, nothing is booted):
#        file  the image is the file /root.qcow2 on an ext4 file system that
#              fills /dev/vda: qcow2root=/dev/vda:/root.qcow2,name=root
#        disk  the image fills /dev/vda itself (the disk is the qcow2 file
#              with room to grow after it): qcow2root=/dev/vda,name=root
#   5. after the VM: the console has the marker line with this run's nonce
#      and no kernel report (oops, WARNING, ...); for "file" the outer ext4
#      is clean after its journal is replayed and the image is copied out
#      of it (debugfs); `qemu-img check` of the image is clean and
#      `qemu-img info` shows neither the dirty flag nor the corrupt bit;
#      the image read back through QEMU (qemu-img convert -O raw) holds a
#      clean ext4 (e2fsck -fn) whose /marker (debugfs) is what the guest
#      wrote and whose /data has the checksum the guest computed.
#
# Needs root (mkinitramfs), initramfs-tools, busybox-static, e2fsprogs,
# qemu-utils and qemu-system-x86; a missing one skips the test.  Work files
# are in a temporary directory under ${TMPDIR:-/var/tmp}, removed at the
# end unless BOOT_KEEP=1 (kept and named on failure).
# shellcheck disable=SC2016 # awk and sh programs in single quotes
set -u

top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top" || exit 1
# shellcheck source=tools/testing/boot-common.sh
. tools/testing/boot-common.sh
kver=$(boot_kver "${1:-}")
timeout_s=${BOOT_TIMEOUT:-300}
cases=${BOOT_CASES-file disk}
finish() { boot_finish; }

echo "# check-boot: kernel ${kver:-none}, cases: $cases"
boot_require "boot from a qcow2 root image" mkinitramfs \
	mkinitramfs busybox mkfs.ext4 debugfs e2fsck qemu-img qemu-system-x86_64 modinfo
if ldd "$(command -v busybox)" >/dev/null 2>&1; then
	skp "boot from a qcow2 root image" "busybox is not static (busybox-static)"
	finish
fi

tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/check-boot.XXXXXX") || { echo "Bail out! mktemp"; exit 1; }

# 1. Module and tool.
tool=$top/tools/qcow2setup/qcow2setup
boot_build_module
if ! make -s -C tools/qcow2setup >"$tmp/build-tool.log" 2>&1 || [ ! -x "$tool" ]; then
	nok "qcow2setup builds"
	diag "$tmp/build-tool.log"
	finish
fi
ok "qcow2setup builds"

# 2. The initramfs, from a private configuration directory.
conf=$tmp/initramfs-tools
mkdir -p "$conf/hooks" "$conf/scripts/local-top" "$conf/conf.d"
cat >"$conf/initramfs.conf" <<'EOF'
MODULES=list
BUSYBOX=auto
COMPRESS=zstd
RUNSIZE=10%
RESUME=none
EOF
printf '%s\n' virtio_pci virtio_blk ext4 >"$conf/modules"
install -m 755 tools/initramfs/hooks/qcow2setup "$conf/hooks/qcow2setup"
install -m 755 tools/initramfs/scripts/local-top/qcow2setup "$conf/scripts/local-top/qcow2setup"
initrd=$tmp/initrd.img
if ! QCOW2SETUP=$tool QCOW2_MODULE=$ko mkinitramfs -d "$conf" -o "$initrd" "$kver" \
	>"$tmp/mkinitramfs.log" 2>&1; then
	nok "mkinitramfs with the qcow2setup hook"
	diag "$tmp/mkinitramfs.log"
	finish
fi
ok "mkinitramfs with the qcow2setup hook"
lsinitramfs "$initrd" >"$tmp/initrd.list" 2>/dev/null
content_ok=1
for f in 'scripts/local-top/qcow2setup' 'sbin/qcow2setup' 'sbin/dmsetup' \
	 "lib/modules/$kver/updates/dm-qcow2.ko" "/dm-mod.ko" "/loop.ko" \
	 "/virtio_blk.ko" "/ext4.ko" 'lib/udev/rules.d/55-dm.rules'; do
	if ! grep -q -- "$f\$" "$tmp/initrd.list"; then
		echo "# initramfs lacks $f"
		content_ok=0
	fi
done
check "initramfs holds the script, qcow2setup, dmsetup, dm-qcow2 and the modules" \
	[ "$content_ok" = 1 ]

# 3. The root image: static busybox, an init that writes and reports.
stage=$tmp/stage
mkdir -p "$stage"/{bin,sbin,dev,proc,sys,run,tmp,root,etc,mnt}
cp "$(command -v busybox)" "$stage/bin/busybox"
for a in $(busybox --list); do
	[ "$a" = busybox ] || [ -e "$stage/bin/$a" ] || ln -s busybox "$stage/bin/$a"
done
head -c 65536 /dev/urandom >"$stage/etc/seed"
seed_md5=$(md5sum "$stage/etc/seed" | cut -d' ' -f1)
echo check-boot >"$stage/etc/hostname"
cat >"$stage/sbin/init" <<'EOF'
#!/bin/sh
# init of the check-boot.sh root image
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
nonce=$(sed -n 's/.*qcow2boot_nonce=\([^ ]*\).*/\1/p' /proc/cmdline)
rootdev=$(awk '$2 == "/" { d = $1 } END { print d }' /proc/mounts)
mod=no
grep -q '^dm_qcow2 ' /proc/modules && mod=yes
seed=$(md5sum /etc/seed | cut -d' ' -f1)
dd if=/dev/urandom of=/data bs=64k count=48 2>/dev/null
data=$(md5sum /data | cut -d' ' -f1)
echo "nonce=$nonce root=$rootdev dm_qcow2=$mod seed_md5=$seed data_md5=$data" >/marker
sync
ro=failed
mount -o remount,ro / && ro=ok
sync
echo "QCOW2BOOT-MARKER nonce=$nonce root=$rootdev dm_qcow2=$mod remount_ro=$ro"
poweroff -f
sleep 30
EOF
chmod 755 "$stage/sbin/init"
nonce_base=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
if mkfs.ext4 -q -F -L qcow2boot -d "$stage" "$tmp/root.raw" 64M >"$tmp/mkfs.log" 2>&1 &&
   qemu-img convert -f raw -O qcow2 "$tmp/root.raw" "$tmp/root.qcow2" >>"$tmp/mkfs.log" 2>&1; then
	ok "root image: ext4 with a static busybox userland, as qcow2"
else
	nok "root image: ext4 with a static busybox userland, as qcow2"
	diag "$tmp/mkfs.log"
	finish
fi
rm -f "$tmp/root.raw"

# 4 and 5, for one case.
boot_case()
{
	local c=$1 d=$tmp/$1 disk spec nonce img rc line marker want md5 fsck_rc
	mkdir -p "$d"
	disk=$d/disk.raw
	nonce=$nonce_base-$c
	case "$c" in
	file)
		mkdir -p "$d/outer"
		cp --sparse=always "$tmp/root.qcow2" "$d/outer/root.qcow2"
		if ! mkfs.ext4 -q -F -L images -d "$d/outer" "$disk" 256M >"$d/mkfs.log" 2>&1; then
			nok "$c: outer ext4 disk with /root.qcow2"
			diag "$d/mkfs.log"
			return
		fi
		rm -rf "$d/outer"
		spec=/dev/vda:/root.qcow2,name=root
		;;
	disk)
		cp --sparse=always "$tmp/root.qcow2" "$disk"
		truncate -s 192M "$disk"
		spec=/dev/vda,name=root
		;;
	esac
	echo "# $c: booting with qcow2root=$spec (timeout ${timeout_s} s)"
	local b0=$SECONDS
	timeout -k 10 "$timeout_s" qemu-system-x86_64 \
		-accel tcg -machine pc -nodefaults -smp 1 -m 512 \
		-display none -monitor none -serial "file:$d/console.log" -no-reboot \
		-kernel "/boot/vmlinuz-$kver" -initrd "$initrd" \
		-append "console=ttyS0 root=/dev/mapper/root qcow2root=$spec panic=-1 rw qcow2boot_nonce=$nonce" \
		-drive "file=$disk,format=raw,if=virtio,cache=unsafe" \
		</dev/null >"$d/qemu.log" 2>&1
	rc=$?
	echo "# $c: qemu exited with $rc after $((SECONDS - b0)) s"
	want="QCOW2BOOT-MARKER nonce=$nonce root=/dev/mapper/root dm_qcow2=yes remount_ro=ok"
	if grep -aq -- "$want" "$d/console.log" 2>/dev/null; then
		ok "$c: booted from /dev/mapper/root, init wrote and reported (qcow2root=$spec)"
	else
		nok "$c: booted from /dev/mapper/root, init wrote and reported (qcow2root=$spec)"
		line=$(grep -a 'QCOW2BOOT-MARKER' "$d/console.log" 2>/dev/null)
		echo "# expected: $want"
		echo "# got: ${line:-no marker line}"
		diag "$d/qemu.log" 5
		diag "$d/console.log" 40
	fi
	if grep -aEq "$report_re" "$d/console.log" 2>/dev/null; then
		nok "$c: no kernel report on the console"
		grep -aE -A5 "$report_re" "$d/console.log" | head -n 40 | sed 's/^/#   /'
	else
		ok "$c: no kernel report on the console"
	fi

	img=$d/root.qcow2
	case "$c" in
	file)
		# The outer file system was never unmounted: replay its journal
		# first, then it must be clean, and the image is copied out.
		e2fsck -y -E journal_only "$disk" >"$d/fsck-outer.log" 2>&1
		e2fsck -fn "$disk" >>"$d/fsck-outer.log" 2>&1
		fsck_rc=$?
		check "$c: outer ext4 clean after journal replay (e2fsck -fn: $fsck_rc)" [ "$fsck_rc" = 0 ]
		[ "$fsck_rc" = 0 ] || diag "$d/fsck-outer.log"
		if ! debugfs -R "dump /root.qcow2 $img" "$disk" >"$d/dump.log" 2>&1 || [ ! -s "$img" ]; then
			nok "$c: image file copied out of the outer ext4"
			diag "$d/dump.log"
			return
		fi
		;;
	disk)
		img=$disk
		;;
	esac
	boot_check_image "$c" "$img" "$d/root.raw" "$d/image" || return
	marker=$(debugfs -R 'cat /marker' "$d/root.raw" 2>/dev/null)
	md5=$(sed -n 's/.* data_md5=\([0-9a-f]*\)$/\1/p' <<<"$marker")
	want="nonce=$nonce root=/dev/mapper/root dm_qcow2=yes seed_md5=$seed_md5 data_md5=$md5"
	if [ -n "$md5" ] && [ "$marker" = "$want" ]; then
		ok "$c: /marker read back through QEMU is what the guest wrote"
	else
		nok "$c: /marker read back through QEMU is what the guest wrote"
		echo "# expected: $want"
		echo "# got: ${marker:-nothing}"
	fi
	debugfs -R "dump /data $d/data" "$d/root.raw" >/dev/null 2>&1
	if [ -n "$md5" ] && [ "$(md5sum <"$d/data" 2>/dev/null | cut -d' ' -f1)" = "$md5" ]; then
		ok "$c: /data read back through QEMU has the guest's checksum"
	else
		nok "$c: /data read back through QEMU has the guest's checksum"
	fi
	rm -f "$d/root.raw" "$d/data"
}

for c in $cases; do
	case "$c" in
	file | disk) boot_case "$c" ;;
	*) nok "unknown case '$c' in BOOT_CASES" ;;
	esac
done
finish
