# SPDX-License-Identifier: GPL-2.0
# shellcheck shell=bash
#
# debian-base.sh: sourced by check-install.sh and check-systemd-boot.sh.
# A Debian 12 (bookworm) chroot made with debootstrap --variant=minbase plus
# some packages from the archive, cached as a tarball so that it is made
# only once.
#
# Settings: $INSTALL_MIRROR (default http://deb.debian.org/debian),
# $INSTALL_SECURITY_MIRROR (default http://deb.debian.org/debian-security),
# $INSTALL_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/dm-qcow2).

deb_mirror=${INSTALL_MIRROR:-http://deb.debian.org/debian}
deb_security=${INSTALL_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# shellcheck disable=SC2034 # used by the scripts that source this file
deb_cache=${INSTALL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dm-qcow2}

# debian_base TAR WORKDIR PACKAGE...: make TAR unless it exists:
# debootstrap --variant=minbase bookworm in WORKDIR (removed afterwards),
# the bookworm, bookworm-updates and bookworm-security sources (kernel
# headers may be in the security suite only), then apt-get install of the
# packages.  A package written "?NAME" is optional: when it cannot be
# installed the base is made without it (check for its files).
debian_base()
{
	local tar=$1 b=$2 p rc=0 need=() opt=()
	shift 2
	[ -s "$tar" ] && return 0
	for p in "$@"; do
		case "$p" in
		\?*) opt+=("${p#\?}") ;;
		*) need+=("$p") ;;
		esac
	done
	echo "# making the Debian 12 base $tar (debootstrap, once)"
	mkdir -p "${tar%/*}" "$b" || return 1
	debootstrap --variant=minbase bookworm "$b" "$deb_mirror" >"$b.log" 2>&1 ||
		{ tail -n 20 "$b/debootstrap/debootstrap.log" "$b.log" 2>/dev/null; return 1; }
	rm -f "$b/etc/apt/sources.list" "$b.log"
	printf 'Types: deb\nURIs: %s\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: %s\nSuites: bookworm-security\nComponents: main\n' \
		"$deb_mirror" "$deb_security" >"$b/etc/apt/sources.list.d/debian.sources"
	cp /etc/resolv.conf "$b/etc/resolv.conf" 2>/dev/null
	mount -t proc proc "$b/proc" || return 1
	# no services start in the chroot
	printf '#!/bin/sh\nexit 101\n' >"$b/usr/sbin/policy-rc.d"
	chmod 755 "$b/usr/sbin/policy-rc.d"
	chroot "$b" /usr/bin/env DEBIAN_FRONTEND=noninteractive LC_ALL=C sh -c \
		'apt-get -q update && apt-get -q -y --no-install-recommends install "$@"' sh "${need[@]}" || rc=1
	for p in "${opt[@]}"; do
		[ "$rc" = 0 ] || break
		chroot "$b" /usr/bin/env DEBIAN_FRONTEND=noninteractive LC_ALL=C \
			apt-get -q -y --no-install-recommends install "$p" ||
			echo "# $p cannot be installed: the base is made without it"
	done
	chroot "$b" apt-get clean
	rm -f "$b/usr/sbin/policy-rc.d"
	umount "$b/proc"
	[ "$rc" = 0 ] || return 1
	tar -C "$b" -cf "$tar.tmp" . && mv "$tar.tmp" "$tar" || return 1
	rm -rf --one-file-system "$b"
}
