#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# build-debs.sh [OUTDIR]: build the Debian binary packages of dm-qcow2 with
# dpkg-deb (default OUTDIR: build/deb):
#
#   dm-qcow2-dkms_<v>_all.deb    module sources in /usr/src/dm-qcow2-<v> with
#                                dkms.conf; postinst builds and installs the
#                                module for every kernel with headers
#   qcow2setup_<v>_<arch>.deb    the tool, its man pages, udev rules, the
#                                qcow2tab systemd generator, bash completion
#                                and (when tools/initramfs exists) the
#                                initramfs-tools hooks
#
# <v> is the target version of dm-qcow2-target.c (tools/packaging/version.sh).
# Needs dpkg-dev, gcc, libdevmapper-dev; runs as any user.
set -eu

top=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$top/build/deb}
mkdir -p "$out"
out=$(cd "$out" && pwd)
pk=$top/tools/packaging/deb
ver=$("$top/tools/packaging/version.sh")
arch=$(dpkg --print-architecture)
maint="dm-qcow2 developers <dm-qcow2@example.org>"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$top" log -1 --format=%ct 2>/dev/null || date +%s)}
work=$out/work
rm -rf "$work"
mkdir -p "$work"

# install -D with a mode, from the tree
put() {	# MODE SRC DEST
	install -D -m "$1" "$2" "$3"
}

# man page, gzipped reproducibly
put_man() {	# SRC DEST_DIR
	local gz
	gz=$2/$(basename "$1").gz
	mkdir -p "$2"
	gzip -9n -c "$1" >"$gz"
	chmod 0644 "$gz"
}

docs() {	# PKGROOT PKGNAME
	local d=$1/usr/share/doc/$2
	mkdir -p "$d"
	put 0644 "$pk/copyright" "$d/copyright"
	{
		echo "$2 ($ver) unstable; urgency=medium"
		echo
		echo "  * Built from the dm-qcow2 source tree (tools/packaging/build-debs.sh)."
		echo
		echo " -- $maint  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
	} | gzip -9n >"$d/changelog.gz"
	chmod 0644 "$d/changelog.gz"
}

finish() {	# PKGROOT: md5sums, Installed-Size, build the .deb
	local root=$1 size deb
	(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' |
		LC_ALL=C sort -z | xargs -0 -r md5sum) >"$root/DEBIAN/md5sums"
	chmod 0644 "$root/DEBIAN/md5sums"
	size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
	sed -i "s/@SIZE@/$size/" "$root/DEBIAN/control"
	find "$root" -type d -exec chmod 0755 {} +
	find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
	deb=$(dpkg-deb --root-owner-group -Zxz --build "$root" "$out" | sed -n "s/.*building package .* in '\(.*\)'\./\1/p")
	echo "build-debs: $(basename "$deb")"
}

# ---------------------------------------------------------- dm-qcow2-dkms
root=$work/dm-qcow2-dkms
src=$root/usr/src/dm-qcow2-$ver
mkdir -p "$src" "$root/DEBIAN"
put 0644 "$top/dkms.conf" "$src/dkms.conf"
put 0644 "$top/Kbuild" "$src/Kbuild"
(cd "$top" && find drivers include -type f -name '*.[ch]') | LC_ALL=C sort | while read -r f; do
	put 0644 "$top/$f" "$src/$f"
done
put 0755 "$top/scripts/shadow-tree.sh" "$src/scripts/shadow-tree.sh"
put 0755 "$top/scripts/compat-probe.sh" "$src/scripts/compat-probe.sh"
grep -q "^PACKAGE_VERSION=\"$ver\"" "$src/dkms.conf" || {
	echo "build-debs: dkms.conf PACKAGE_VERSION is not $ver (the target version)" >&2
	exit 1
}
docs "$root" dm-qcow2-dkms
for s in postinst prerm; do
	sed "s/@VERSION@/$ver/" "$pk/dm-qcow2-dkms.$s" >"$root/DEBIAN/$s"
	chmod 0755 "$root/DEBIAN/$s"
done
cat >"$root/DEBIAN/control" <<EOC
Package: dm-qcow2-dkms
Version: $ver
Architecture: all
Maintainer: $maint
Installed-Size: @SIZE@
Depends: dkms (>= 2.8)
Recommends: qcow2setup
Section: kernel
Priority: optional
Description: device-mapper target mapping qcow2 images (DKMS sources)
 dm-qcow2 is a Linux device-mapper target, qcow2, that maps a qcow2 image
 (the disk image format of QEMU) as a block device, with backing chains,
 compressed clusters, internal snapshots, reads and writes, and no
 userspace process in the I/O path.
 .
 This package provides the sources of the dm-qcow2 kernel module and
 builds them with DKMS for every installed kernel that has its headers.
EOC
finish "$root"

# ---------------------------------------------------------- qcow2setup
root=$work/qcow2setup
mkdir -p "$root/DEBIAN"
# Build in a copy with Debian's hardening flags (the tree's objects stay).
b=$work/src
mkdir -p "$b/tools" "$b/include" "$b/drivers/md/dm-qcow2"
cp -r "$top/tools/qcow2setup" "$b/tools/"
cp -r "$top/include/qcow2" "$b/include/"
cp "$top/drivers/md/dm-qcow2/qcow2-format.c" "$b/drivers/md/dm-qcow2/"
make -s -C "$b/tools/qcow2setup" clean
export DEB_BUILD_MAINT_OPTIONS=hardening=+all
CFLAGS="$(dpkg-buildflags --get CFLAGS) $(dpkg-buildflags --get CPPFLAGS)" \
	LDFLAGS="$(dpkg-buildflags --get LDFLAGS)" make -s -C "$b/tools/qcow2setup"
put 0755 "$b/tools/qcow2setup/qcow2setup" "$root/usr/sbin/qcow2setup"
strip --remove-section=.comment --remove-section=.note "$root/usr/sbin/qcow2setup"
put_man "$top/tools/qcow2setup/qcow2setup.8" "$root/usr/share/man/man8"
put_man "$top/tools/qcow2setup/qcow2tab.5" "$root/usr/share/man/man5"
put 0644 "$top/tools/udev/60-dm-qcow2.rules" "$root/lib/udev/rules.d/60-dm-qcow2.rules"
put 0755 "$top/tools/systemd/qcow2setup-generator" \
	"$root/lib/systemd/system-generators/qcow2setup-generator"
put 0644 "$top/tools/bash-completion/qcow2setup" \
	"$root/usr/share/bash-completion/completions/qcow2setup"
put 0644 "$pk/qcow2tab" "$root/etc/qcow2tab"
echo /etc/qcow2tab >"$root/DEBIAN/conffiles"
initramfs=
if [ -d "$top/tools/initramfs" ]; then
	# tools/initramfs mirrors /usr/share/initramfs-tools (hooks/,
	# scripts/<stage>/, conf-hooks.d/); other files there are not installed.
	for d in hooks scripts conf-hooks.d; do
		[ -d "$top/tools/initramfs/$d" ] || continue
		(cd "$top/tools/initramfs" && find "$d" -type f) | while read -r f; do
			m=0755
			case "$f" in conf-hooks.d/*) m=0644 ;; esac
			put "$m" "$top/tools/initramfs/$f" "$root/usr/share/initramfs-tools/$f"
		done
	done
	# Top-level *.conf files are the hooks' settings: /etc/qcow2setup.
	for f in "$top"/tools/initramfs/*.conf; do
		[ -f "$f" ] || continue
		put 0644 "$f" "$root/etc/qcow2setup/${f##*/}"
		echo "/etc/qcow2setup/${f##*/}" >>"$root/DEBIAN/conffiles"
	done
	[ -d "$root/usr/share/initramfs-tools" ] && initramfs=y
fi
docs "$root" qcow2setup
put 0755 "$pk/qcow2setup.postinst" "$root/DEBIAN/postinst"
if [ -n "$initramfs" ]; then
	echo "activate-noawait update-initramfs" >"$root/DEBIAN/triggers"
	chmod 0644 "$root/DEBIAN/triggers"
fi

# Library dependencies from the binary, as dh_shlibdeps finds them.
shl=$work/shlibdeps
mkdir -p "$shl/debian"
printf 'Source: qcow2setup\n\nPackage: qcow2setup\nArchitecture: any\n' >"$shl/debian/control"
deps=$(cd "$shl" && dpkg-shlibdeps -O "$root/usr/sbin/qcow2setup" 2>/dev/null |
	sed -n 's/^shlibs:Depends=//p')
[ -n "$deps" ] || { echo "build-debs: dpkg-shlibdeps found no dependencies" >&2; exit 1; }
cat >"$root/DEBIAN/control" <<EOC
Package: qcow2setup
Version: $ver
Architecture: $arch
Maintainer: $maint
Installed-Size: @SIZE@
Depends: $deps
Recommends: dm-qcow2-dkms, dmsetup, udev
Suggests: qemu-utils${initramfs:+, initramfs-tools}
Section: admin
Priority: optional
Description: map qcow2 images as block devices through dm-qcow2
 qcow2setup maps a qcow2 image (the disk image format of QEMU) and its
 backing chain as /dev/mapper/NAME through the qcow2 device-mapper target
 of the dm-qcow2 kernel module, and shows and removes such mappings.
 .
 The package also maps the images listed in /etc/qcow2tab at boot (a
 systemd generator), gives mapped devices /dev/disk/by-id/dm-qcow2-NAME
 links (udev rules) and completes qcow2setup commands in bash.
EOC
finish "$root"
rm -rf "$work"
