#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# check-install.sh: clean-install test of the Debian packages, in TAP, ending
# with "N passed, N failed, N skipped".
#
# Builds dm-qcow2-dkms and qcow2setup (tools/packaging/build-debs.sh), then
# installs them the way a user does (dpkg -i, then apt-get -f install pulls
# the dependencies from the Debian archive) into a fresh Debian 12 chroot
# that has only the minimal base system and the headers of the kernels in
# $INSTALL_KVERS (default: the kernels `make check` tests, from
# tools/testing/kvers.sh, so those the archive has now; the older
# $INSTALL_KVER, if set, is the default instead), and checks:
#   - both packages end up installed, with dkms and libdevmapper pulled in;
#   - qcow2setup --help runs in the chroot, and the files the package ships
#     (man page, udev rules, systemd generator, bash completion) are there;
#   - for each of these kernels, the dkms package built and installed the
#     module: dkms status says "installed", the .ko has that kernel's
#     vermagic and modinfo finds it through modules.dep;
#   - apt-get purge removes the module and dkms forgets it.
# The first kernel's headers must install; those of the others are left
# out of the base (and their three checks skipped) when the archive does
# not have them.  Each further kernel adds its DKMS build to the run (about
# 75 s of CPU time for 6.12, whose headers also pull in its linux-image in
# bookworm); INSTALL_KVERS=6.1.0-57-amd64 checks only that one.
#
# Needs root, debootstrap and network access to the Debian archive
# ($INSTALL_MIRROR, default http://deb.debian.org/debian, and
# $INSTALL_SECURITY_MIRROR for bookworm-security).  The base chroot
# (debootstrap --variant=minbase bookworm plus the kernel headers) is made
# once and cached as a tarball in $INSTALL_CACHE (default
# ${XDG_CACHE_HOME:-$HOME/.cache}/dm-qcow2; tools/testing/debian-base.sh);
# --rebuild-base makes it again.
# The chroot itself is unpacked in a temporary directory and removed.
# shellcheck disable=SC2317,SC2016 # functions run through check; dpkg-query format
set -u

top=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=tools/testing/debian-base.sh
. "$top/tools/testing/debian-base.sh"
read -r -a kvers <<<"${INSTALL_KVERS:-${INSTALL_KVER:-$("$top/tools/testing/kvers.sh")}}"
[ "${#kvers[@]}" -gt 0 ] || { echo "Bail out! no kernels: tools/testing/kvers.sh found none"; exit 1; }
kver=${kvers[0]}
base=$deb_cache/debian12-minbase-headers-$(IFS=-; echo "${kvers[*]}").tar
rebuild=0
[ "${1:-}" = --rebuild-base ] && rebuild=1

n=0 pass=0 fail=0 skip=0
t0=$SECONDS
ok() { n=$((n + 1)); pass=$((pass + 1)); echo "ok $n - $1"; }
nok() { n=$((n + 1)); fail=$((fail + 1)); echo "not ok $n - $1"; }
skp() { n=$((n + 1)); skip=$((skip + 1)); echo "ok $n - $1 # SKIP $2"; }
finish()
{
	echo "1..$n"
	echo "# $((SECONDS - t0)) s"
	echo "$pass passed, $fail failed, $skip skipped"
	[ "$fail" = 0 ]
	exit
}

tmp=$(mktemp -d /var/tmp/check-install.XXXXXX) || { echo "Bail out! mktemp"; exit 1; }
root=$tmp/root
mounts=()
cleanup()
{
	local i
	for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
		umount -l "${mounts[i]}" 2>/dev/null
	done
	rm -rf --one-file-system "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# check DESC COMMAND...: ok if the command succeeds, else its output
check()
{
	local d=$1
	shift
	if "$@" >"$tmp/out" 2>&1; then
		ok "$d"
	else
		nok "$d"
		sed 's/^/# /' "$tmp/out" | tail -n 25
	fi
}
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
	DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"; }

tests="build unpack dpkg apt status help files"
for k in "${kvers[@]}"; do
	tests="$tests dkms($k) vermagic($k) modinfo($k)"
done
tests="$tests purge"
skip_all()
{
	local t
	for t in $tests; do
		skp "$t" "$1"
	done
	finish
}
[ "$(id -u)" = 0 ] || skip_all "needs root (chroot)"
command -v debootstrap >/dev/null || skip_all "no debootstrap (apt-get install debootstrap)"

# 1: the packages
ver=$("$top/tools/packaging/version.sh")
arch=$(dpkg --print-architecture)
check "build-debs.sh builds both packages" "$top/tools/packaging/build-debs.sh" "$tmp/deb"
debs=("$tmp/deb/dm-qcow2-dkms_${ver}_all.deb" "$tmp/deb/qcow2setup_${ver}_${arch}.deb")

# 2: the base chroot (cached)
mkbase()
{
	local k pk=("linux-headers-$kver")
	for k in "${kvers[@]:1}"; do
		pk+=("?linux-headers-$k")
	done
	debian_base "$base" "$tmp/base" "${pk[@]}"
}
unpack()
{
	[ "$rebuild" = 1 ] && rm -f "$base"
	mkbase || return 1
	mkdir -p "$root" && tar -C "$root" -xf "$base" || return 1
	mount -t proc proc "$root/proc" && mounts+=("$root/proc") || return 1
	mount --bind /dev "$root/dev" && mounts+=("$root/dev") || return 1
	mount -t tmpfs tmpfs "$root/run" && mounts+=("$root/run") || return 1
	cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null
	# no services start in the chroot
	printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
	chmod 755 "$root/usr/sbin/policy-rc.d"
	[ -e "$root/lib/modules/$kver/build/Makefile" ] || { echo "no headers for $kver"; return 1; }
	! ls "$root"/lib/modules/*/updates/dkms/dm-qcow2.ko* >/dev/null 2>&1
}
check "fresh Debian 12 chroot with linux-headers-$kver" unpack
for k in "${kvers[@]:1}"; do
	[ -e "$root/lib/modules/$k/build/Makefile" ] || echo "# no headers for $k in the base: its checks are skipped"
done
if [ $fail != 0 ]; then
	for t in $tests; do
		case $t in build|unpack) ;; *) skp "$t" "no packages or no chroot" ;; esac
	done
	finish
fi

# 3-4: install
cp "${debs[@]}" "$root/tmp/" || true
# dpkg -i alone must fail here (dependencies missing) and leave them unconfigured
if in_root dpkg -i "/tmp/${debs[0]##*/}" "/tmp/${debs[1]##*/}" >"$tmp/out" 2>&1; then
	nok "dpkg -i reports the missing dependencies"
	tail -n 10 "$tmp/out" | sed 's/^/# /'
else
	if grep -q 'dependency problems' "$tmp/out"; then
		ok "dpkg -i reports the missing dependencies"
	else
		nok "dpkg -i reports the missing dependencies"
		tail -n 10 "$tmp/out" | sed 's/^/# /'
	fi
fi
apt_install()
{
	in_root apt-get -q update && in_root apt-get -q -y -f install
}
check "apt-get -f install completes the installation" apt_install
grep -E '(newly installed|^Setting up (dm-qcow2|qcow2setup|dkms)|^dm-qcow2|^Building|^E: [^C])' "$tmp/out" |
	head -n 20 | sed 's/^/#   /'

# 5: package state
pkgstate()
{
	local p s r=0
	for p in dm-qcow2-dkms qcow2setup dkms libdevmapper1.02.1; do
		s=$(in_root dpkg-query -W -f '${db:Status-Abbrev}' "$p" 2>/dev/null)
		echo "$p: ${s:-not installed}"
		[ "${s%% *}" = ii ] || r=1
	done
	return "$r"
}
check "dm-qcow2-dkms, qcow2setup, dkms, libdevmapper installed (ii)" pkgstate

# 6-7: the tool
helpout() { in_root qcow2setup --help && in_root qcow2setup --help | grep -q open; }
check "qcow2setup --help runs in the chroot" helpout
files()
{
	local f r=0 list
	list=$(in_root dpkg -L qcow2setup) || return 1
	for f in /usr/sbin/qcow2setup qcow2setup.8 60-dm-qcow2.rules qcow2setup-generator \
		 bash-completion/completions/qcow2setup; do
		grep -q -- "$f" <<<"$list" || { echo "qcow2setup ships nothing like $f"; r=1; continue; }
		# every listed path must exist
		while read -r p; do
			[ -e "$root$p" ] || { echo "missing $p"; r=1; }
		done < <(grep -- "$f" <<<"$list")
	done
	return "$r"
}
check "man page, udev rules, generator and completion installed" files

# 8-10: the module, for each kernel
dkmsstate()
{
	local s k=$1 re
	s=$(in_root dkms status 2>&1)
	echo "$s"
	# the kernel version as a literal in the regular expression
	re=${k//./\\.}
	re=${re//+/\\+}
	grep -Eq "^dm-qcow2[/,] ?$ver, $re, [^:]*: installed" <<<"$s"
}
vermagic()
{
	local k=$1 ko f tmpko=$tmp/m.ko vm
	ko=$(cd "$root" && find "lib/modules/$k/updates/dkms" -name "dm-qcow2.ko*" 2>/dev/null | head -n 1)
	[ -n "$ko" ] || { echo "no /lib/modules/$k/updates/dkms/dm-qcow2.ko*"; return 1; }
	f=$root/$ko
	case "$f" in
	*.xz) xz -dc "$f" >"$tmpko" ;;
	*.zst) zstd -qdc "$f" >"$tmpko" ;;
	*) cp "$f" "$tmpko" ;;
	esac || return 1
	vm=$(modinfo -F vermagic "$tmpko")
	echo "/$ko: vermagic $vm"
	[ "${vm%% *}" = "$k" ]
}
for k in "${kvers[@]}"; do
	if [ ! -e "$root/lib/modules/$k/build/Makefile" ]; then
		for t in dkms vermagic modinfo; do
			skp "$t ($k)" "linux-headers-$k not in the Debian archive"
		done
		continue
	fi
	check "dkms status: dm-qcow2/$ver installed for $k" dkmsstate "$k"
	check "module built for $k (vermagic)" vermagic "$k"
	check "modinfo -k $k dm-qcow2 finds it (depmod)" \
		in_root modinfo -k "$k" -n dm-qcow2
done

# 11: purge
purge()
{
	in_root apt-get -q -y purge dm-qcow2-dkms qcow2setup || return 1
	if ls "$root"/lib/modules/*/updates/dkms/dm-qcow2.ko* 2>/dev/null; then
		echo "module left behind"
		return 1
	fi
	! in_root dkms status 2>/dev/null | grep -q dm-qcow2 || { echo "dkms still lists dm-qcow2"; return 1; }
	! in_root test -e /usr/sbin/qcow2setup || { echo "qcow2setup left behind"; return 1; }
}
check "apt-get purge removes the module and the tool" purge

finish
