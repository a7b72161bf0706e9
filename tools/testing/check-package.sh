#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# check-package.sh [KVER...]: host-only checks of the Debian packaging, in
# TAP, ending with "N passed, N failed, N skipped":
#   - dkms.conf carries the target version; both .deb files build
#     (tools/packaging/build-debs.sh) with the expected contents and
#     dependencies, and lintian reports no errors or warnings;
#   - the packaged module sources build with DKMS for every KVER, in a
#     temporary DKMS tree (nothing is installed on the host);
#   - the qcow2tab generator makes the expected units from sample tables,
#     skips bad lines, and systemd-analyze accepts the units;
#   - the udev rules are well-formed, the man pages format without warnings,
#     and the bash completion loads and completes.
set -u

top=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0 pass=0 fail=0 skip=0

ok() { n=$((n + 1)); pass=$((pass + 1)); echo "ok $n - $1"; }
nok() { n=$((n + 1)); fail=$((fail + 1)); echo "not ok $n - $1"; }
skp() { n=$((n + 1)); skip=$((skip + 1)); echo "ok $n - $1 # SKIP $2"; }
check() {	# DESC COMMAND...: ok if the command succeeds
	local d=$1
	shift
	if "$@" >"$tmp/out" 2>&1; then
		ok "$d"
	else
		nok "$d"
		sed 's/^/# /' "$tmp/out" | tail -n 20
	fi
}
has() { command -v "$1" >/dev/null 2>&1; }

ver=$("$top/tools/packaging/version.sh")
arch=$(dpkg --print-architecture)
check "dkms.conf PACKAGE_VERSION is the target version $ver" \
	grep -qx "PACKAGE_VERSION=\"$ver\"" "$top/dkms.conf"

# ------------------------------------------------------------ packages
debs=$tmp/deb
dkmsdeb=$debs/dm-qcow2-dkms_${ver}_all.deb
tooldeb=$debs/qcow2setup_${ver}_${arch}.deb
check "build-debs.sh builds the packages" "$top/tools/packaging/build-debs.sh" "$debs"
check "dm-qcow2-dkms_${ver}_all.deb exists" test -s "$dkmsdeb"
check "qcow2setup_${ver}_${arch}.deb exists" test -s "$tooldeb"

# contents DEB PATH...: every PATH is in the package
contents() {
	local deb=$1 p r=0
	shift
	dpkg-deb -c "$deb" | awk '{ print $6 }' | sed 's|^\./|/|' >"$tmp/list" || return 1
	for p in "$@"; do
		grep -qx "$p" "$tmp/list" || { echo "missing: $p"; r=1; }
	done
	return $r
}
field() { dpkg-deb -f "$1" "$2" 2>/dev/null; }

src=/usr/src/dm-qcow2-$ver
mapfile -t srcs < <(cd "$top" && find drivers include -type f -name '*.[ch]' | sed "s|^|$src/|")
check "dm-qcow2-dkms has dkms.conf, Kbuild, the build scripts and all ${#srcs[@]} sources" \
	contents "$dkmsdeb" "$src/dkms.conf" "$src/Kbuild" "$src/scripts/shadow-tree.sh" \
	"$src/scripts/compat-probe.sh" "${srcs[@]}" /usr/share/doc/dm-qcow2-dkms/copyright
check "dm-qcow2-dkms depends on dkms" bash -c "dpkg-deb -f '$dkmsdeb' Depends | grep -qw dkms"
mkdir -p "$tmp/ctl"
dpkg-deb -e "$dkmsdeb" "$tmp/ctl/dkms"
check "dm-qcow2-dkms postinst/prerm run dkms add/build/install/remove" bash -c "
	cd '$tmp/ctl/dkms' && test -x postinst && test -x prerm && sh -n postinst && sh -n prerm &&
	grep -q 'dkms add' postinst && grep -q 'dkms build' postinst &&
	grep -q 'dkms install' postinst && grep -q 'dkms remove' prerm &&
	! grep -q '@VERSION@' postinst prerm && grep -q '^VERSION=$ver\$' postinst"

tool=(/usr/sbin/qcow2setup /usr/share/man/man8/qcow2setup.8.gz /usr/share/man/man5/qcow2tab.5.gz
      /lib/udev/rules.d/60-dm-qcow2.rules /lib/systemd/system-generators/qcow2setup-generator
      /usr/share/bash-completion/completions/qcow2setup /etc/qcow2tab
      /usr/share/doc/qcow2setup/copyright)
check "qcow2setup has the tool, man pages, udev rules, generator, completion, qcow2tab" \
	contents "$tooldeb" "${tool[@]}"
if [ -d "$top/tools/initramfs/hooks" ]; then
	mapfile -t ird < <(cd "$top/tools/initramfs" && find hooks scripts -type f 2>/dev/null |
			   sed 's|^|/usr/share/initramfs-tools/|')
	check "qcow2setup has the ${#ird[@]} initramfs-tools files of tools/initramfs" \
		contents "$tooldeb" "${ird[@]}"
else
	skp "qcow2setup has the initramfs-tools hook" "no tools/initramfs"
fi
dep=$(field "$tooldeb" Depends)
check "qcow2setup depends on libdevmapper and libc ($dep)" \
	bash -c "grep -q 'libdevmapper1.02.1' <<<'$dep' && grep -q 'libc6' <<<'$dep'"
dpkg-deb -e "$tooldeb" "$tmp/ctl/tool"
check "/etc/qcow2tab is a conffile" grep -qx /etc/qcow2tab "$tmp/ctl/tool/conffiles"
dpkg-deb -x "$tooldeb" "$tmp/root"
check "the packaged qcow2setup runs" "$tmp/root/usr/sbin/qcow2setup" --help
check "qcow2setup --version and its man page say $ver" bash -c "
	[ \"\$('$tmp/root/usr/sbin/qcow2setup' --version)\" = 'qcow2setup $ver' ] &&
	grep -q '^\.TH QCOW2SETUP 8 .*\"qcow2setup $ver\"' '$top/tools/qcow2setup/qcow2setup.8'"

if has lintian; then
	lintian --tag-display-limit 0 "$dkmsdeb" "$tooldeb" >"$tmp/lintian" 2>&1
	if grep -q '^[EW]: ' "$tmp/lintian"; then
		nok "lintian: no errors or warnings"
		grep '^[EW]: ' "$tmp/lintian" | sed 's/^/# /'
	else
		ok "lintian: no errors or warnings"
	fi
else
	skp "lintian" "lintian is not installed"
fi

# ------------------------------------------------------------ DKMS
# A private DKMS tree: the packaged sources, built, never installed.
dkms_build() {	# KVER
	local k=$1 t=$tmp/dkms ko
	rm -rf "$t"
	mkdir -p "$t/tree" "$t/src"
	dpkg-deb -x "$dkmsdeb" "$t/pkg" || return 1
	mv "$t/pkg/usr/src/dm-qcow2-$ver" "$t/src/" || return 1
	dkms --dkmstree "$t/tree" --sourcetree "$t/src" add -m dm-qcow2 -v "$ver" || return 1
	if ! dkms --dkmstree "$t/tree" --sourcetree "$t/src" build -m dm-qcow2 -v "$ver" -k "$k"; then
		tail -n 30 "$t/tree/dm-qcow2/$ver/build/make.log" 2>/dev/null
		return 1
	fi
	ko=$(find "$t/tree/dm-qcow2/$ver/$k" -name 'dm-qcow2.ko*' | head -n 1)
	[ -n "$ko" ] || { echo "no module in the DKMS tree"; return 1; }
	modinfo -F vermagic "$ko" | grep -q "^$k " || { echo "vermagic: $(modinfo -F vermagic "$ko")"; return 1; }
	dkms --dkmstree "$t/tree" --sourcetree "$t/src" status | grep -q "$k.*built"
}
for k in "$@"; do
	if ! has dkms; then
		skp "dkms build for $k" "dkms is not installed"
	elif [ "$(id -u)" != 0 ]; then
		skp "dkms build for $k" "needs root"
	elif [ ! -e "/lib/modules/$k/build/Makefile" ]; then
		skp "dkms build for $k" "no headers for $k"
	else
		check "dkms builds the packaged sources for $k (private DKMS tree)" dkms_build "$k"
	fi
done

# ------------------------------------------------------------ generator
gen=$top/tools/systemd/qcow2setup-generator
g=$tmp/gen
mkdir -p "$g/etc" "$g/empty" "$g/none" "$g/out"
cat >"$g/etc/qcow2tab" <<'EOT'
# comment
   # indented comment

vm0	/var/lib/images/vm0.qcow2	cache-size=64M
base /var/lib/images/base.qcow2 ro,nofail,snapshot=s%1
blk-1 /dev/disk/by-id/ata-x noauto
data /srv/img/a.qcow2 late,lazy-refcounts,bogus
bad/name /x
rel x.qcow2
vm0 /dup
q /a/b"c
cs /a cache-size=12X
EOT
run_gen() {	# TAB OUTDIR
	QCOW2TAB=$1 QCOW2SETUP=$tmp/root/usr/sbin/qcow2setup sh "$gen" "$2" 2>"$2.err"
}
check "generator runs on a sample table" run_gen "$g/etc/qcow2tab" "$g/out"
u=$g/out
check "generator makes one unit per valid line" bash -c "
	cd '$u' && test \"\$(ls -1 *.service | sort | tr '\n' ' ')\" = \
	'qcow2setup@base.service qcow2setup@blk\\x2d1.service qcow2setup@data.service qcow2setup@vm0.service '"
check "generator links: requires, wants (nofail), none (noauto), multi-user (late)" bash -c "
	cd '$u' && test -L local-fs.target.requires/qcow2setup@vm0.service &&
	test -L local-fs.target.wants/qcow2setup@base.service &&
	test -L multi-user.target.requires/qcow2setup@data.service &&
	! find . -name 'qcow2setup@blk*' -type l | grep -q . &&
	test -e local-fs.target.requires/qcow2setup@vm0.service"
check "generator ExecStart/ExecStop lines" bash -c "
	cd '$u' && grep -qx 'ExecStart=.*/qcow2setup open --cache-size 64M /var/lib/images/vm0.qcow2 vm0' qcow2setup@vm0.service &&
	grep -qx 'ExecStop=.*/qcow2setup close vm0' qcow2setup@vm0.service &&
	grep -qx 'ExecStart=.*/qcow2setup open --read-only --snapshot s%%1 /var/lib/images/base.qcow2 base' qcow2setup@base.service &&
	grep -qx 'ExecStart=.*/qcow2setup open --lazy-refcounts /srv/img/a.qcow2 data' qcow2setup@data.service"
check "generator ordering: before local-fs-pre, late after local-fs with the image's mount" bash -c "
	cd '$u' && grep -qx 'Before=local-fs-pre.target' qcow2setup@vm0.service &&
	grep -qx 'After=systemd-remount-fs.service' qcow2setup@vm0.service &&
	grep -qx 'Conflicts=umount.target' qcow2setup@vm0.service &&
	grep -qx 'After=local-fs.target' qcow2setup@data.service &&
	grep -qx 'RequiresMountsFor=/srv/img' qcow2setup@data.service &&
	! grep -q 'local-fs-pre' qcow2setup@data.service &&
	grep -qx 'Requires=dev-disk-by\\\\x2did-ata\\\\x2dx.device' 'qcow2setup@blk\\x2d1.service'"
check "generator reports the 5 bad lines and the unknown option" bash -c "
	test \"\$(grep -c 'skipped' '$u.err')\" = 5 && grep -q \"unknown option 'bogus'\" '$u.err'"
check "generator: no table, no units" bash -c "
	QCOW2TAB='$g/missing' sh '$gen' '$g/none' && test -z \"\$(ls -A '$g/none')\""
: >"$g/empty.tab"
check "generator: comment-only table, no units" bash -c "
	QCOW2TAB='$g/empty.tab' sh '$gen' '$g/empty' && test -z \"\$(ls -A '$g/empty')\""
if has systemd-analyze; then
	check "systemd-analyze verify accepts the generated units" bash -c "
		cd '$u' && SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no ./*.service 2>&1 |
		tee /dev/stderr | { ! grep -q .; }"
else
	skp "systemd-analyze verify" "systemd-analyze is not installed"
fi

# ------------------------------------------------------------ udev rules
# Every rule line is KEY[{attr}]OP"value" pairs; every GOTO has its LABEL.
udev_lint() {
	local f=$1 r=0 line
	while IFS= read -r line; do
		case $line in "" | \#*) continue ;; esac
		if ! grep -qE '^([A-Z_]+(\{[A-Za-z0-9_]+\})?(==|!=|=|\+=|:=)"[^"]*"(, *|$))+$' <<<"$line"; then
			echo "bad rule: $line"
			r=1
		fi
	done <"$f"
	while read -r l; do
		grep -q "^LABEL=\"$l\"" "$f" || { echo "no LABEL $l"; r=1; }
	done < <(sed -n 's/.*GOTO="\([^"]*\)".*/\1/p' "$f" | sort -u)
	return $r
}
rules=$top/tools/udev/60-dm-qcow2.rules
check "udev rules are well-formed" udev_lint "$rules"
check "udev rules link by-id/dm-qcow2-NAME for QCOW2- UUIDs only" bash -c "
	grep -q 'ENV{DM_UUID}!=\"QCOW2-\\*\", GOTO=' '$rules' &&
	grep -q 'SYMLINK+=\"disk/by-id/dm-qcow2-\$env{DM_NAME}\"' '$rules'"
check "udev rules sort after dmsetup's 55-dm.rules" bash -c "
	test \"\$(printf '%s\n' 55-dm.rules \"\$(basename '$rules')\" | LC_ALL=C sort | tail -n 1)\" = \"\$(basename '$rules')\""

# ------------------------------------------------------------ man pages
for m in "$top/tools/qcow2setup/qcow2setup.8" "$top/tools/qcow2setup/qcow2tab.5"; do
	if has man; then
		check "$(basename "$m") formats without warnings" bash -c "
			LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l '$m' 2>&1 >/dev/null | { ! grep -q .; }"
	else
		skp "$(basename "$m") formats" "man is not installed"
	fi
done

# ------------------------------------------------------------ completion
comp=$top/tools/bash-completion/qcow2setup
check "bash completion parses (bash -n)" bash -n "$comp"
if [ -r /usr/share/bash-completion/bash_completion ]; then
	mkdir -p "$tmp/bin" "$tmp/img"
	# A stand-in whose "list" shows two mappings.
	cat >"$tmp/bin/qcow2setup" <<'EOT'
#!/bin/sh
[ "$1" = list ] && printf 'NAME MODE SIZE LAYERS IMAGE\nvm0 rw 1G 1 /x\nvm1 ro 1G 2 /y\n'
EOT
	chmod +x "$tmp/bin/qcow2setup"
	: >"$tmp/img/disk.qcow2"
	cat >"$tmp/comp.sh" <<EOT
. /usr/share/bash-completion/bash_completion
. '$comp'
c() { COMP_WORDS=("\$@"); COMP_CWORD=\$((\$# - 1)); COMP_LINE="\$*"; COMP_POINT=\${#COMP_LINE};
      COMPREPLY=(); _qcow2setup; echo "\$*|\${COMPREPLY[*]}"; }
complete -p qcow2setup
c qcow2setup ''
c qcow2setup cl
c qcow2setup open --re
c qcow2setup close ''
c qcow2setup -v status vm
c qcow2setup info '$tmp/img/di'
c qcow2setup list --
EOT
	PATH=$tmp/bin:$PATH bash "$tmp/comp.sh" >"$tmp/comp.out" 2>&1
	check "completion is registered (complete -p)" grep -qx 'complete -F _qcow2setup qcow2setup' "$tmp/comp.out"
	check "completion: commands" grep -qx 'qcow2setup |open close status stats commit list info' "$tmp/comp.out"
	check "completion: command prefix" grep -qx 'qcow2setup cl|close' "$tmp/comp.out"
	check "completion: open options" grep -qx 'qcow2setup open --re|--read-only' "$tmp/comp.out"
	check "completion: device names from qcow2setup list" bash -c "
		grep -qx 'qcow2setup close |vm0 vm1' '$tmp/comp.out' &&
		grep -qx 'qcow2setup -v status vm|vm0 vm1' '$tmp/comp.out'"
	check "completion: image files" grep -qx "qcow2setup info $tmp/img/di|$tmp/img/disk.qcow2" "$tmp/comp.out"
	check "completion: list options" grep -qx 'qcow2setup list --|--json --verbose' "$tmp/comp.out"
	[ "$fail" = 0 ] || sed 's/^/# /' "$tmp/comp.out"
else
	skp "bash completion with compgen" "bash-completion is not installed"
fi

# ------------------------------------------------------------ shellcheck
if has shellcheck; then
	check "shellcheck: packaging scripts" shellcheck "$top/tools/packaging/build-debs.sh" \
		"$top/tools/packaging/version.sh" "$top/tools/testing/check-package.sh" \
		"$top/tools/packaging/deb/dm-qcow2-dkms.postinst" "$top/tools/packaging/deb/dm-qcow2-dkms.prerm" \
		"$top/tools/packaging/deb/qcow2setup.postinst"
	check "shellcheck: generator (sh) and completion (bash)" bash -c "
		shellcheck -s sh '$gen' && shellcheck -s bash '$comp'"
else
	skp "shellcheck" "shellcheck is not installed"
fi

echo "1..$n"
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" = 0 ]
