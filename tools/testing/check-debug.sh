#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# check-debug.sh - `make check-debug`: the selftests on a debug kernel.
#
# Builds (or reuses) a kernel from Debian's linux-source-$DEBUG_KSERIES (6.1
# by default) with KASAN, lockdep (PROVE_LOCKING), kmemleak,
# DEBUG_ATOMIC_SLEEP and fault injection (fail_make_request, failslab), and
# everything the test VM needs built in: the config is `allnoconfig` plus
# tools/testing/debug-kernel/debug.config, and the build fails if an option
# of the fragment did not end up in the final .config.  Then builds
# dm-qcow2.ko against it and runs the selftests in one VM on that kernel
# (run-vm.sh --kernel), where any KASAN/lockdep/kmemleak/... report fails the
# run.  The kernel build takes about half an hour on 2 cores (once, then
# cached); the whole suite about an hour on an idle host.  `make check` runs
# the detector self-test and a few write-path tests with DEBUG_CACHED_ONLY=1:
# only when the kernel is already cached (it does not build kernels).
#
# Cache: ${XDG_CACHE_HOME:-~/.cache}/dm-qcow2/debug-kernel/
#   src/<package version>/linux-source-<series>/   the unpacked sources
#   <package version>-<fragment hash>/             bzImage, modules.builtin*,
#       kernelrelease, build-time (seconds), build/ (the O= tree, with
#       Module.symvers: what `make KDIR=...` builds the module against)
#
# Environment:
#   DEBUG_TESTS="test_a.sh ..."  the selftests to run (default: TEST_PROGS)
#   DEBUG_KSERIES=6.1            the linux-source-<series> package to build
#   DEBUG_JOBS=N                 make -j (default: nproc)
#   DEBUG_TIMEOUT=SEC            the whole VM run (default 21600)
#   DEBUG_TEST_TIMEOUT=SEC       each test (default 3600; run_tests.sh -t)
#   DEBUG_BUILD_ONLY=1           stop after building the kernel and module
#   DEBUG_PLANTED=0              skip the detector self-test (below); =only:
#                                run only the self-test
#   DEBUG_LOG=DIR                run-vm.sh logs (default build/check-debug)
#   DEBUG_CACHED_ONLY=1          if the kernel is not cached, report the run
#                                as skipped (exit 0) instead of building it
#   DEBUG_SHARD=K/N              passed to the selftests as QCOW2_SHARD: the
#                                long matrix suites run only their cases K,
#                                K+N, ... (default: all cases)
#
# Before the selftests, a self-test of the detector: a short VM run that
# loads tools/testing/debug-kernel/planted/dmq_planted.ko and plants a
# memory leak, a lock inversion and an out-of-bounds read; the run must fail
# with status 125 (a kernel report) and the reports run-vm.sh prints must
# include each of the three, else check-debug fails: a debug kernel whose
# reports nobody sees proves nothing.
#
# Prints TAP lines for the self-test and the selftests, and ends with
# "check-debug: N passed, N failed, N skipped".  Exit status: 0 when
# everything passed, else non-zero (run-vm.sh's status: 125 for a kernel
# report, 124 for a timeout, ...).
set -u

top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top" || exit 1
# shellcheck source=tools/testing/counts.sh
. tools/testing/counts.sh

series=${DEBUG_KSERIES:-6.1}
pkg=linux-source-$series
frag=$top/tools/testing/debug-kernel/debug.config
cache=${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/dm-qcow2/debug-kernel
jobs=${DEBUG_JOBS:-$(nproc)}
logdir=${DEBUG_LOG:-$top/build/check-debug}

say()
{
	echo "check-debug: $*"
}

die()
{
	echo "check-debug: error: $*" >&2
	exit 1
}

# DEBUG_CACHED_ONLY=1 and no kernel to use: the whole run is one skip.
skip_uncached()
{
	echo "ok 1 - debug kernel # SKIP not built ($*)"
	echo "check-debug: 0 passed, 0 failed, 1 skipped"
	exit 0
}

# Packages only this target needs (not in tools/setup-deps.sh: CI does not
# build kernels).
install_deps()
{
	local p missing=""

	for p in "$pkg" bc bison flex libelf-dev libssl-dev cpio xz-utils; do
		dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' ||
			missing="$missing $p"
	done
	[ -z "$missing" ] && return 0
	[ "${DEBUG_CACHED_ONLY:-0}" = 1 ] &&
		skip_uncached "missing:$missing; make check-debug installs them and builds it"
	[ "$(id -u)" = 0 ] || die "missing packages:$missing (run as root to install)"
	say "installing:$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq || die "apt-get update failed"
	# shellcheck disable=SC2086 # one package per word
	apt-get install -y -qq --no-install-recommends $missing >/dev/null ||
		die "apt-get install$missing failed"
}

# check_config CONFIG: every option of the fragment has its value in CONFIG
# (Kconfig silently drops options whose dependencies are not met).
check_config()
{
	local line opt want got bad=0

	while IFS= read -r line; do
		case "$line" in
		CONFIG_*=*) opt=${line%%=*} want=${line#*=} ;;
		"# CONFIG_"*" is not set") opt=${line#\# } opt=${opt%% *} want=n ;;
		*) continue ;;
		esac
		got=$(grep -m1 "^$opt=" "$1" | cut -d= -f2-)
		[ -n "$got" ] || got=n
		if [ "$got" != "$want" ]; then
			echo "check-debug: $opt: wanted $want, got $got" >&2
			bad=1
		fi
	done <"$frag"
	return $bad
}

build_kernel()
{
	local tarball=/usr/src/$pkg.tar.xz ver hash src dir start t

	ver=$(dpkg-query -W -f='${Version}' "$pkg") || die "$pkg is not installed"
	[ -r "$tarball" ] || die "no $tarball"
	hash=$(sha256sum "$frag" | cut -c1-12)
	src=$cache/src/$ver/$pkg
	dir=$cache/$ver-$hash
	KDIR=$dir/build
	KIMAGE=$dir/bzImage
	if [ -f "$dir/.complete" ]; then
		KREL=$(cat "$dir/kernelrelease")
		say "using the cached kernel $KREL in $dir (built in $(cat "$dir/build-time") s)"
		return 0
	fi
	[ "${DEBUG_CACHED_ONLY:-0}" = 1 ] &&
		skip_uncached "for this $pkg and ${frag#"$top"/}; make check-debug builds it, about 30 min"

	if [ ! -f "$src/Makefile" ]; then
		say "unpacking $tarball ($pkg $ver)"
		rm -rf "$cache/src/$ver.tmp"
		mkdir -p "$cache/src/$ver.tmp" || die "cannot create $cache/src"
		tar -C "$cache/src/$ver.tmp" -xJf "$tarball" || die "cannot unpack $tarball"
		[ -f "$cache/src/$ver.tmp/$pkg/Makefile" ] || die "$tarball has no $pkg/"
		rm -rf "$cache/src/$ver"
		mv "$cache/src/$ver.tmp" "$cache/src/$ver" || die "cannot move the sources"
	fi

	rm -rf "$dir"
	mkdir -p "$KDIR" || die "cannot create $KDIR"
	say "configuring $pkg $ver: allnoconfig + ${frag#"$top"/}"
	make -s -C "$src" O="$KDIR" KCONFIG_ALLCONFIG="$frag" allnoconfig >"$dir/config.log" 2>&1 ||
		{ cat "$dir/config.log" >&2; die "allnoconfig failed"; }
	check_config "$KDIR/.config" || die "options of ${frag#"$top"/} missing in the final .config"

	say "building the kernel with -j$jobs (log: $dir/build.log)"
	start=$SECONDS
	if ! nice -n 10 make -C "$src" O="$KDIR" -j"$jobs" all >"$dir/build.log" 2>&1; then
		tail -n 40 "$dir/build.log" >&2
		die "kernel build failed (log: $dir/build.log)"
	fi
	t=$((SECONDS - start))
	echo "$t" >"$dir/build-time"
	cp "$KDIR/arch/x86/boot/bzImage" "$KIMAGE" || die "no bzImage"
	cp "$KDIR"/modules.builtin "$KDIR"/modules.builtin.modinfo "$dir/" 2>/dev/null
	make -s -C "$src" O="$KDIR" kernelrelease >"$dir/kernelrelease" || die "no kernelrelease"
	[ -s "$KDIR/Module.symvers" ] || die "no Module.symvers in $KDIR"
	touch "$dir/.complete"
	KREL=$(cat "$dir/kernelrelease")
	say "built $KREL in $t s ($((t / 60)) min $((t % 60)) s) with -j$jobs"
}

install_deps
"$top/tools/setup-deps.sh" || die "tools/setup-deps.sh failed"
build_kernel

say "building dm-qcow2.ko for $KREL"
make -s -C "$top" KVER="$KREL" KDIR="$KDIR" modules >/dev/null ||
	die "module build against $KDIR failed"
[ "${DEBUG_BUILD_ONLY:-0}" = 1 ] && { say "kernel $KIMAGE, module build/$KREL/dm-qcow2.ko"; exit 0; }
# Host-built helpers some selftests use (the guest sees the tree read-only).
make -s -C "$top" qcow2setup >/dev/null || die "qcow2setup build failed"
make -s -C "$top/tools/testing/log-writes" >/dev/null || die "log-writes build failed"

# The detector self-test: one VM run plants all three bugs; it must fail
# with 125, and run-vm.sh's "kernel report" lines must hold each bug's own
# report (not only a "Call Trace:" that any of them prints).  One run, not
# one per bug: each boot of this kernel costs about two minutes under TCG.
planted_check()
{
	local pdir="$top/build/$KREL-planted" kind sig rc n=0 bad=0

	rm -rf "$pdir"
	mkdir -p "$pdir"
	cp "$top"/tools/testing/debug-kernel/planted/{Makefile,dmq_planted.c} "$pdir"/
	if ! make -s -C "$KDIR" M="$pdir" modules >"$pdir/build.log" 2>&1; then
		die "planted module build failed (see $pdir/build.log)"
	fi
	# shellcheck disable=SC2016 # $k is the guest shell's
	tools/testing/vm/run-vm.sh --kver "$KREL" --kernel "$KIMAGE" \
		--module "$pdir/dmq_planted.ko" --append "kmemleak=on" --mem 1024 \
		--timeout 900 --log "$logdir-planted" -- /bin/sh -c \
		'for k in leak lockdep kasan; do echo $k > /sys/module/dmq_planted/parameters/plant; done' \
		>"$pdir/planted.out" 2>&1
	rc=$?
	# What run-vm.sh printed from its first "kernel report" line on.
	sed -n '/^run-vm: kernel report:/,$p' "$pdir/planted.out" >"$pdir/reports"
	for kind in leak lockdep kasan; do
		n=$((n + 1))
		case $kind in
		leak) sig='unreferenced object' ;;
		lockdep) sig='possible circular locking' ;;
		kasan) sig='KASAN: slab-out-of-bounds' ;;
		esac
		if [ $rc -eq 125 ] && grep -q "$sig" "$pdir/reports"; then
			echo "ok $n - planted $kind: the run failed (125) with a report: $sig"
			pass=$((pass + 1))
		else
			echo "not ok $n - planted $kind: run-vm.sh status $rc, report \"$sig\" $(grep -q "$sig" "$pdir/reports" || echo "not ")found (logs: $logdir-planted)"
			bad=$((bad + 1))
		fi
	done
	if [ $bad -ne 0 ]; then
		echo "check-debug: $pass passed, $bad failed, 0 skipped"
		die "the report detector missed $bad planted bug(s)"
	fi
}

if [ "${DEBUG_PLANTED:-1}" != 0 ]; then
	say "detector self-test: planting a leak, a lock inversion and an out-of-bounds read"
	start=$SECONDS
	planted_check
	say "detector self-test passed in $((SECONDS - start)) s"
	if [ "${DEBUG_PLANTED:-1}" = only ]; then
		echo "check-debug: $pass passed, 0 failed, 0 skipped"
		exit 0
	fi
fi

# shellcheck disable=SC2086 # DEBUG_TESTS: one test per word
set -- ${DEBUG_TESTS:-}
say "selftests ${*:-(all)} in a VM on $KREL, started at $(date +%T) (logs: $logdir)"
start=$SECONDS
tools/testing/vm/run-vm.sh --kver "$KREL" --kernel "$KIMAGE" \
	--module "build/$KREL/dm-qcow2.ko" --append "kmemleak=on" \
	--disk 2G --disk 2G --mem 3072 --timeout "${DEBUG_TIMEOUT:-21600}" --log "$logdir" \
	--env "QCOW2_SHARD=${DEBUG_SHARD:-}" -- \
	selftests/dm-qcow2/run_tests.sh -t "${DEBUG_TEST_TIMEOUT:-3600}" "$@"
rc=$?
say "VM exited with status $rc after $((SECONDS - start)) s"
add_vm_result "$logdir/output.log" "$rc" "selftest VM on $KREL (logs: $logdir)"
echo "check-debug: $pass passed, $fail failed, $skip skipped"
exit $rc
