#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# check-systemd-boot.sh [KVER]: boot a Debian 12 root file system with
# systemd as PID 1 in a VM, with the qcow2setup package installed and two
# images in /etc/qcow2tab, and check that the generator's units map them at
# boot (fstab mounts them) and close them at shutdown, leaving clean images.
# TAP, ending with "N passed, N failed, N skipped".  KVER defaults to the
# 6.12 kernel of tools/testing/kvers.sh.
#
# On the host (nothing is installed there):
#   1. builds the module (build/KVER/dm-qcow2.ko) and the packages
#      (tools/packaging/build-debs.sh);
#   2. the root file system: a Debian 12 minbase chroot with systemd-sysv,
#      udev, kmod, dmsetup and e2fsprogs (tools/testing/debian-base.sh,
#      debootstrap once, cached as a tarball), plus the qcow2setup .deb
#      (dpkg -i), the module in /lib/modules/KVER/extra, the host's modules
#      for virtio, ext4, dm-mod and loop (depmod), and:
#        /etc/qcow2tab   qa /var/lib/qcow2/a.qcow2 lazy-refcounts
#                        qb /dev/vdb               cache-size=4M
#        /etc/fstab      /dev/mapper/qa on /mnt/qa (required, fsck pass 2)
#                        /dev/mapper/qb on /mnt/qb (nofail)
#      a test service run after multi-user.target, and drop-ins for the two
#      generated units that print a line on the console when they have
#      stopped (whether the mapping and the loop device are gone).  The
#      ext4 image of this tree is cached in $INSTALL_CACHE, keyed on the
#      base, the .deb, the module and this script;
#   3. an initramfs (mkinitramfs, MODULES=list: virtio_pci, virtio_blk,
#      ext4; cached) and, per run, a copy of the root image with a fresh
#      a.qcow2 (an ext4 file system converted to qcow2, written with
#      debugfs) and a second disk that is the qcow2 image b (room to grow
#      after it);
#   4. boots qemu-system-x86_64 (TCG, one CPU, 1 GiB, root=/dev/vda, a
#      timeout of $BOOT_TIMEOUT s, default 600).  The guest's test service
#      prints the state of qcow2setup@qa/qb.service (active, made by the
#      generator from /etc/qcow2tab), of the mounts, `qcow2setup status`,
#      `dmsetup status` and `systemctl status`, writes /data and /marker to
#      both file systems, reads the dirty bit of a.qcow2 while it is mapped
#      (lazy refcounts: set) and runs `systemctl poweroff`;
#   5. after the VM: the console shows both units started from the
#      generator and active with their file systems mounted, the test
#      service's end line, both units stopped at shutdown with the mapping
#      (and for qa the loop device) gone, the power-off, and no kernel
#      report; the root ext4 is clean after its journal is replayed; each
#      image (a.qcow2 copied out of the root with debugfs) passes
#      `qemu-img check`, `qemu-img info` shows it neither dirty nor corrupt,
#      and read back through QEMU (qemu-img convert -O raw) it holds a clean
#      ext4 whose /marker and /data are what the guest wrote.
#
# Needs root (chroot, mkinitramfs), debootstrap and the Debian archive for
# the first run ($INSTALL_MIRROR, $INSTALL_SECURITY_MIRROR, as
# check-install.sh), dpkg-deb, initramfs-tools, e2fsprogs, qemu-utils and
# qemu-system-x86; a missing one skips the test.  Work files are in a
# temporary directory under ${TMPDIR:-/var/tmp}, removed at the end unless
# BOOT_KEEP=1 (kept and named on failure).
# shellcheck disable=SC2016 # sh programs and unit lines in single quotes
set -u

top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top" || exit 1
# shellcheck source=tools/testing/debian-base.sh
. tools/testing/debian-base.sh
# shellcheck source=tools/testing/boot-common.sh
. tools/testing/boot-common.sh
kver=$(boot_kver "${1:-}")
timeout_s=${BOOT_TIMEOUT:-600}
base_pkgs=(systemd-sysv udev kmod dmsetup e2fsprogs)
base=$deb_cache/debian12-systemd-$(echo "${base_pkgs[*]}" | sha256sum | cut -c1-12).tar

# the unpacked trees, which are big (the images stay on failure)
boot_cleanup() { if [ -n "$tmp" ]; then rm -rf --one-file-system "$tmp/root" "$tmp/base"; fi; }
trap boot_cleanup EXIT
trap 'exit 130' INT TERM
finish() { boot_finish; }

echo "# check-systemd-boot: kernel ${kver:-none}"
what="boot Debian 12 with systemd and /etc/qcow2tab"
boot_require "$what" "chroot, mkinitramfs" debootstrap dpkg-deb mkinitramfs mkfs.ext4 \
	debugfs e2fsck depmod modprobe qemu-img qemu-system-x86_64

tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/check-systemd-boot.XXXXXX") || { echo "Bail out! mktemp"; exit 1; }

# 1. Module and packages.
boot_build_module
ver=$(tools/packaging/version.sh)
deb=$tmp/deb/qcow2setup_${ver}_$(dpkg --print-architecture).deb
if ! tools/packaging/build-debs.sh "$tmp/deb" >"$tmp/debs.log" 2>&1 || [ ! -f "$deb" ]; then
	nok "build-debs.sh builds the qcow2setup package"
	diag "$tmp/debs.log"
	finish
fi
ok "build-debs.sh builds the qcow2setup package"

# 2. The root file system image (cached).
# Modules the guest loads after the initramfs (and those it loaded).
guest_mods="virtio_pci virtio_blk ext4 dm-mod loop autofs4"

# the files of the guest's configuration, into the tree $1
guest_config()
{
	local r=$1 n loops
	mkdir -p "$r/var/lib/qcow2" "$r/mnt/qa" "$r/mnt/qb" "$r/usr/local/sbin"
	echo qcow2sd >"$r/etc/hostname"
	cat >"$r/etc/qcow2tab" <<'EOF'
# /etc/qcow2tab of check-systemd-boot.sh
qa	/var/lib/qcow2/a.qcow2	lazy-refcounts
qb	/dev/vdb		cache-size=4M
EOF
	cat >"$r/etc/fstab" <<'EOF'
# /etc/fstab of check-systemd-boot.sh
/dev/vda	/	ext4	rw,errors=remount-ro	0 0
/dev/mapper/qa	/mnt/qa	ext4	defaults,x-systemd.device-timeout=90s	0 2
/dev/mapper/qb	/mnt/qb	ext4	nofail,x-systemd.device-timeout=90s	0 0
EOF
	# What the generated units do when they have stopped.
	# (and for qa whether a loop device still holds a.qcow2).
	for n in qa qb; do
		loops=""
		[ "$n" = qa ] && loops=' loops=$$(losetup -n -O NAME -j /var/lib/qcow2/a.qcow2 | wc -l)'
		mkdir -p "$r/etc/systemd/system/qcow2setup@$n.service.d"
		cat >"$r/etc/systemd/system/qcow2setup@$n.service.d/50-check.conf" <<EOF
[Service]
StandardOutput=journal+console
StandardError=journal+console
ExecStopPost=/bin/sh -c 'echo "QCOW2SD stopped $n result=\$\$SERVICE_RESULT mapped=\$\$(test -e /dev/mapper/$n && echo yes || echo no)$loops"'
EOF
	done
	cat >"$r/etc/systemd/system/qcow2sd-check.service" <<'EOF'
[Unit]
Description=check-systemd-boot test
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/qcow2sd-check
StandardOutput=journal+console
StandardError=journal+console
EOF
	mkdir -p "$r/etc/systemd/system/multi-user.target.wants"
	ln -sf ../qcow2sd-check.service "$r/etc/systemd/system/multi-user.target.wants/"
	# Quiet, quick boot: no logins, no timers.
	for n in serial-getty@ttyS0.service getty@tty1.service getty-static.service console-getty.service \
		 systemd-logind.service apt-daily.timer apt-daily-upgrade.timer \
		 e2scrub_all.timer e2scrub_reap.service fstrim.timer; do
		ln -sf /dev/null "$r/etc/systemd/system/$n"
	done
	cat >"$r/usr/local/sbin/qcow2sd-check" <<'EOF'
#!/bin/sh
# test service of check-systemd-boot.sh
nonce=$(sed -n 's/.*qcow2sd_nonce=\([^ ]*\).*/\1/p' /proc/cmdline)
say() { echo "QCOW2SD $*"; }
for n in qa qb; do
	u=qcow2setup@$n.service
	# nofail mounts are not ordered before local-fs.target: wait for it.
	systemctl start "mnt-$n.mount"
	say "unit $n active=$(systemctl is-active "$u")" \
	    "source=$(systemctl show -P SourcePath "$u")" \
	    "fragment=$(systemctl show -P FragmentPath "$u")" \
	    "mount=$(systemctl is-active "mnt-$n.mount")" \
	    "fs=$(findmnt -n -o SOURCE,FSTYPE "/mnt/$n" | tr -s ' ' ,)"
	systemctl status --no-pager -n 5 "$u" 2>&1 | sed "s/^/QCOW2SD| /"
	qcow2setup status "$n" 2>&1 | sed "s/^/QCOW2SD| /"
	dmsetup status "$n" 2>&1 | sed "s/^/QCOW2SD| /"
	if [ -d "/mnt/$n/lost+found" ]; then
		head -c 3145728 /dev/urandom >"/mnt/$n/data"
		md5=$(md5sum <"/mnt/$n/data" | cut -d' ' -f1)
		echo "nonce=$nonce name=$n data_md5=$md5" >"/mnt/$n/marker"
		sync
		say "wrote $n data_md5=$md5"
	fi
done
# The incompatible features of a.qcow2 (header bytes 72-79): with lazy
# refcounts, the dirty bit (bit 0) is set while the image is mapped and
# written.
inc=$(dd if=/var/lib/qcow2/a.qcow2 bs=4096 count=1 iflag=direct 2>/dev/null |
      od -An -j 79 -N 1 -tu1 | tr -d ' ')
say "qa incompat_low_byte=$inc dirty_while_mapped=$(( ${inc:-0} & 1 ))"
say "done nonce=$nonce"
systemctl --no-block poweroff
EOF
	chmod 755 "$r/usr/local/sbin/qcow2sd-check"
}

rootimg=""
mkroot()
{
	local r=$tmp/root m f
	debian_base "$base" "$tmp/base" "${base_pkgs[@]}" || return 1
	key=$( {
		echo "$kver"
		ls -l --time-style=+%s "$base"
		dpkg-deb --fsys-tarfile "$deb" | sha256sum
		sha256sum <"$ko"
		sha256sum <"$top/tools/testing/check-systemd-boot.sh"
	} | sha256sum | cut -c1-16)
	rootimg=$deb_cache/sdboot-root-$kver-$key.ext4
	[ -s "$rootimg" ] && return 0
	echo "# making the root image $rootimg"
	mkdir -p "$r" && tar -C "$r" -xf "$base" || return 1
	cp "$deb" "$r/tmp/" || return 1
	chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C \
		dpkg -i "/tmp/${deb##*/}" || return 1
	rm -f "$r/tmp/${deb##*/}"
	# the host's modules the guest needs, and ours
	for m in $guest_mods; do
		modprobe -S "$kver" -D "$m" | sed -n 's/^insmod //p'
	done | sed 's/ .*//' | sort -u >"$tmp/mods.list"
	while read -r f; do
		install -D -m 644 "$f" "$r$f" || return 1
	done <"$tmp/mods.list"
	for f in modules.order modules.builtin modules.builtin.modinfo; do
		cp "/lib/modules/$kver/$f" "$r/lib/modules/$kver/" 2>/dev/null
	done
	install -D -m 644 "$ko" "$r/lib/modules/$kver/extra/dm-qcow2.ko" || return 1
	depmod -b "$r" "$kver" || return 1
	guest_config "$r"
	rm -f "$deb_cache"/sdboot-root-"$kver"-*.ext4
	mkfs.ext4 -q -F -L qcow2sd -d "$r" "$rootimg.tmp" 1G && mv "$rootimg.tmp" "$rootimg" || return 1
	rm -rf --one-file-system "$r"
}
if mkroot >"$tmp/root.log" 2>&1; then
	ok "Debian 12 root image with systemd, qcow2setup.deb and the modules"
else
	nok "Debian 12 root image with systemd, qcow2setup.deb and the modules"
	diag "$tmp/root.log" 30
	finish
fi

# 3. Initramfs (cached), the per-run disks.
conf=$tmp/initramfs-tools
mkdir -p "$conf/hooks" "$conf/scripts" "$conf/conf.d"
printf 'MODULES=list\nBUSYBOX=auto\nCOMPRESS=zstd\nRUNSIZE=10%%\nRESUME=none\n' >"$conf/initramfs.conf"
printf '%s\n' virtio_pci virtio_blk ext4 >"$conf/modules"
initrd=$deb_cache/sdboot-initrd-$kver-$(cat "$conf/initramfs.conf" "$conf/modules" | sha256sum | cut -c1-16).img
if [ -s "$initrd" ] ||
   { mkinitramfs -d "$conf" -o "$initrd.tmp" "$kver" >"$tmp/mkinitramfs.log" 2>&1 &&
     mv "$initrd.tmp" "$initrd"; }; then
	ok "initramfs for $kver (virtio_blk, ext4)"
else
	nok "initramfs for $kver (virtio_blk, ext4)"
	diag "$tmp/mkinitramfs.log"
	finish
fi

mkdisks()
{
	cp --sparse=always "$rootimg" "$tmp/root.ext4" || return 1
	mkfs.ext4 -q -F -L qa "$tmp/a.raw" 64M &&
		qemu-img convert -f raw -O qcow2 "$tmp/a.raw" "$tmp/a.qcow2" || return 1
	debugfs -w -R "write $tmp/a.qcow2 /var/lib/qcow2/a.qcow2" "$tmp/root.ext4" || return 1
	mkfs.ext4 -q -F -L qb "$tmp/b.raw" 64M &&
		qemu-img convert -f raw -O qcow2 "$tmp/b.raw" "$tmp/b.disk" &&
		truncate -s 128M "$tmp/b.disk" || return 1
	rm -f "$tmp/a.raw" "$tmp/b.raw" "$tmp/a.qcow2"
}
if mkdisks >"$tmp/disks.log" 2>&1; then
	ok "disks: root with /var/lib/qcow2/a.qcow2, image b as the second disk"
else
	nok "disks: root with /var/lib/qcow2/a.qcow2, image b as the second disk"
	diag "$tmp/disks.log"
	finish
fi

# 4. Boot.
nonce=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
con=$tmp/console.log
echo "# booting (timeout ${timeout_s} s)"
b0=$SECONDS
timeout -k 10 "$timeout_s" qemu-system-x86_64 \
	-accel tcg -machine pc -nodefaults -smp 1 -m 1024 \
	-display none -monitor none -serial "file:$con" -no-reboot \
	-kernel "/boot/vmlinuz-$kver" -initrd "$initrd" \
	-append "console=ttyS0 root=/dev/vda rw panic=-1 systemd.show_status=1 systemd.log_color=0 qcow2sd_nonce=$nonce" \
	-drive "file=$tmp/root.ext4,format=raw,if=virtio,cache=unsafe" \
	-drive "file=$tmp/b.disk,format=raw,if=virtio,cache=unsafe" \
	</dev/null >"$tmp/qemu.log" 2>&1
rc=$?
echo "# qemu exited with $rc after $((SECONDS - b0)) s"

# 5. The console.
# The console without carriage returns and escape sequences, and the
# test's lines without the "[time] unit[pid]: " of journald's forwarding.
sed -e 's/\r//g' -e 's/\x1b\[[0-9;]*[A-Za-z]//g' -e 's/^.*\(QCOW2SD[ |]\)/\1/' \
	"$con" >"$tmp/console.txt" 2>/dev/null
c=$tmp/console.txt
if grep -q "^QCOW2SD done nonce=$nonce\$" "$c"; then
	ok "systemd booted to multi-user.target and ran the test service"
else
	nok "systemd booted to multi-user.target and ran the test service"
	diag "$tmp/qemu.log" 5
	diag "$c" 60
fi
for q in qa qb; do
	want="QCOW2SD unit $q active=active source=/etc/qcow2tab fragment=/run/systemd/generator/qcow2setup@$q.service mount=active fs=/dev/mapper/$q,ext4"
	if grep -qxF "$want" "$c"; then
		ok "$q: generator's qcow2setup@$q.service opened it at boot, fstab mounted it"
	else
		nok "$q: generator's qcow2setup@$q.service opened it at boot, fstab mounted it"
		echo "# expected: $want"
		echo "# got: $(grep "^QCOW2SD unit $q " "$c" || echo nothing)"
		grep "^QCOW2SD| " "$c" | sed 's/^/#   /'
	fi
done
if grep -qx "QCOW2SD qa incompat_low_byte=[0-9]* dirty_while_mapped=1" "$c"; then
	ok "qa: dirty bit set while mapped with lazy refcounts"
else
	nok "qa: dirty bit set while mapped with lazy refcounts"
	echo "# got: $(grep '^QCOW2SD qa incompat' "$c" || echo nothing)"
fi
# at shutdown, after the test service ended
for q in qa qb; do
	want="QCOW2SD stopped $q result=success mapped=no"
	[ "$q" = qa ] && want="$want loops=0"
	if sed -n '/^QCOW2SD done /,$p' "$c" | grep -qxF "$want"; then
		ok "$q: qcow2setup@$q.service stopped at shutdown and closed it"
	else
		nok "$q: qcow2setup@$q.service stopped at shutdown and closed it"
		echo "# expected after the test's end: $want"
		echo "# got: $(grep "^QCOW2SD stopped $q " "$c" || echo nothing)"
		grep -i "qcow2\|mnt-$q" "$c" | sed -n '/QCOW2SD done/,$p' | tail -n 15 | sed 's/^/#   /'
	fi
done
if grep -q 'reboot: Power down' "$c"; then
	ok "the guest powered off"
else
	nok "the guest powered off (qemu exit $rc)"
	diag "$c" 30
fi
if grep -aEq "$report_re" "$c"; then
	nok "no kernel report on the console"
	grep -aE -A5 "$report_re" "$c" | head -n 40 | sed 's/^/#   /'
else
	ok "no kernel report on the console"
fi

# 6. The images.
e2fsck -y -E journal_only "$tmp/root.ext4" >"$tmp/fsck-root.log" 2>&1
e2fsck -fn "$tmp/root.ext4" >>"$tmp/fsck-root.log" 2>&1
fsck_rc=$?
check "root ext4 clean after journal replay (e2fsck -fn: $fsck_rc)" [ "$fsck_rc" = 0 ]
[ "$fsck_rc" = 0 ] || diag "$tmp/fsck-root.log"
debugfs -R "dump /var/lib/qcow2/a.qcow2 $tmp/a.qcow2" "$tmp/root.ext4" >"$tmp/dump.log" 2>&1
for q in qa qb; do
	img=$tmp/a.qcow2
	[ "$q" = qb ] && img=$tmp/b.disk
	if [ ! -s "$img" ]; then
		nok "$q: image copied out of the root"
		diag "$tmp/dump.log"
		continue
	fi
	raw=$tmp/$q.raw
	boot_check_image "$q" "$img" "$raw" "$tmp/image-$q" || continue
	marker=$(debugfs -R 'cat /marker' "$raw" 2>/dev/null)
	md5=$(sed -n "s/^QCOW2SD wrote $q data_md5=\([0-9a-f]*\)\$/\1/p" "$c")
	want="nonce=$nonce name=$q data_md5=$md5"
	if [ -n "$md5" ] && [ "$marker" = "$want" ]; then
		ok "$q: /marker read back through QEMU is what the guest wrote"
	else
		nok "$q: /marker read back through QEMU is what the guest wrote"
		echo "# expected: $want"
		echo "# got: ${marker:-nothing}"
	fi
	debugfs -R "dump /data $tmp/$q.data" "$raw" >/dev/null 2>&1
	if [ -n "$md5" ] && [ "$(md5sum <"$tmp/$q.data" 2>/dev/null | cut -d' ' -f1)" = "$md5" ]; then
		ok "$q: /data read back through QEMU has the guest's checksum"
	else
		nok "$q: /data read back through QEMU has the guest's checksum"
	fi
	rm -f "$raw" "$tmp/$q.data"
done
finish
