#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_container.sh - a device opened by qcow2setup, handed to a container.
#
# The image is a qcow2 overlay over a qcow2 base holding an ext4 file system
# with a set of files.  It is opened read-write with qcow2setup and its
# device is passed into a "container": `unshare --mount --pid --fork` with a
# private tmpfs on /dev that holds only that device node (made with mknod
# from the major:minor qcow2setup reports), and its own /proc.  In there:
#
#   1. clean run: the container checks that its /dev holds nothing else,
#      mounts the device, checks the base's files, writes new files with
#      fsync (dd conv=fsync), removes one, unmounts and exits 0.  Afterwards
#      the device is unused (not mounted anywhere), qcow2setup close works,
#      `qemu-img check` is clean, the base image is unchanged, and every
#      file reads back identical both through a read-only reopen with
#      qcow2setup (mounted read-only) and through QEMU (qemu-img convert to
#      raw, mounted through a loop device);
#   2. killed container: the image is opened again; the container mounts
#      it, writes files with fsync and more without, says it is ready and
#      waits; the test kills it with SIGKILL while the file system is
#      mounted in its namespace.  The namespace's end unmounts the file
#      system; close (retried while that finishes) works, `qemu-img check`
#      is clean, e2fsck -n finds the file system clean, and the fsynced
#      files are intact.
#
# Needs root, the module, the tool built on the host, qemu-img, mkfs.ext4,
# e2fsck, unshare.

# shellcheck disable=SC2317,SC2016 # functions called indirectly; scripts in single quotes
. "$(dirname "$0")/test_common.sh"

TOP=$(cd "$(dirname "$0")/../.." && pwd)
Q2S=${QCOW2SETUP:-$TOP/tools/qcow2setup/qcow2setup}
[ -x "$Q2S" ] || _skip "qcow2setup is not built ($Q2S): run 'make -C tools/qcow2setup' on the host"
_require_root
_require_cmd qemu-img mkfs.ext4 e2fsck unshare mknod sha256sum losetup
_require_module

WORK=$(_scratch_dir)
[ -d "$WORK" ] || _fail "no scratch directory"
P="q2ct$$"
IMG=$WORK/ct.qcow2
MNT=$WORK/mnt
mkdir -p "$MNT"
CT_PID=""

_ct_cleanup()
{
	local n
	if [ -n "$CT_PID" ]; then
		kill -KILL "$CT_PID" 2>/dev/null
		wait "$CT_PID" 2>/dev/null
	fi
	mountpoint -q "$MNT" && umount "$MNT"
	for n in $(dmsetup ls 2>/dev/null | awk -v p="$P" 'index($1, p) == 1 { print $1 }'); do
		"$Q2S" close --force "$n" >/dev/null 2>&1 || dmsetup remove --retry "$n" >/dev/null 2>&1
	done
	return 0
}
_on_exit _ct_cleanup

# The container.  $1 = device major:minor, $2 = directory with the files to
# write, $3 = mode (clean|killed), $4 = ready file (killed).  Everything it
# needs from the host is on the shared root (bash, coreutils, mount); it
# never uses /dev/null (its /dev only holds the disk).
CT_SCRIPT='set -u
mm=$1 src=$2 mode=$3 ready=${4:-}
mount -t tmpfs -o mode=0755,nosuid,size=1m ctdev /dev || exit 10
mknod /dev/disk b "${mm%%:*}" "${mm#*:}" || exit 11
mount -t proc proc /proc || exit 12
[ "$$" = 1 ] || { echo "container: pid $$, not 1"; exit 13; }
nodes=$(ls -A /dev)
[ "$nodes" = disk ] || { echo "container: /dev holds: $nodes"; exit 14; }
r=$src/root
mkdir -p "$r" || exit 15
mount /dev/disk "$r" || { echo "container: mount failed"; exit 16; }
grep -q " $r .* - ext4 " /proc/self/mountinfo || { echo "container: not mounted?"; exit 17; }
(cd "$r/base" && sha256sum -c --quiet "$src/base.sums") || { echo "container: base files differ"; exit 18; }
mkdir -p "$r/new"
for f in "$src"/data/*; do
	dd if="$f" of="$r/new/${f##*/}" bs=64k conv=fsync status=none || exit 19
done
if [ "$mode" = clean ]; then
	rm "$r/base/file3" || exit 20
fi
sync -f "$r" || exit 21
case $mode in
clean)
	umount "$r" || { echo "container: umount failed"; exit 22; }
	echo "container: done"
	exit 0
	;;
killed)
	# more writes, not synced, then wait to be killed with the file
	# system mounted
	for f in "$src"/data/*; do
		cat "$f" >"$r/new/${f##*/}.nosync" || exit 23
	done
	echo ready >"$ready"
	while :; do sleep 1; done
	;;
esac
'

# _container MAJ:MIN SRC MODE [READY]  in the foreground, output to ct.log
_container()
{
	unshare --mount --pid --fork --propagation private \
		bash -c "$CT_SCRIPT" container "$@" >"$WORK/ct.log" 2>&1 </dev/null
}

# _close NAME: close, retried while a namespace that ended releases it.
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

_majmin()
{
	dmsetup info -c --noheadings -o major,minor --separator : "$1" | tr -d ' '
}

# _check_files ROOT: base files (less file3) and new files as written
_check_files()
{
	local r=$1 rc=0
	(cd "$r/base" && grep -v ' \./file3$' "$WORK/src/base.sums" | sha256sum -c --quiet -) ||
		{ _diag "base files differ in $r"; rc=1; }
	[ ! -e "$r/base/file3" ] || { _diag "$r/base/file3 was not removed"; rc=1; }
	(cd "$r/new" && sha256sum -c --quiet "$WORK/src/new.sums") ||
		{ _diag "new files differ in $r"; rc=1; }
	return $rc
}

t_setup()
{
	local i
	mkdir -p "$WORK/src/data" "$WORK/fs/base" || return 1
	for i in $(seq 1 12); do
		head -c $((i * 12288 + i)) /dev/urandom >"$WORK/fs/base/file$i" || return 1
		head -c $((i * 40000 + 7)) /dev/urandom >"$WORK/src/data/new$i" || return 1
	done
	(cd "$WORK/fs/base" && sha256sum ./* >"$WORK/src/base.sums") &&
	(cd "$WORK/src/data" && sha256sum ./* >"$WORK/src/new.sums") || return 1
	truncate -s 48M "$WORK/fs.raw" &&
	mkfs.ext4 -q -F -L ctroot -d "$WORK/fs" "$WORK/fs.raw" &&
	qemu-img convert -O qcow2 "$WORK/fs.raw" "$WORK/base.qcow2" &&
	qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$IMG" || return 1
	rm -f "$WORK/fs.raw"
	sha256sum <"$WORK/base.qcow2" >"$WORK/base.sum"
}

t_clean_container()
{
	local rc=0 n=${P}a mm out
	"$Q2S" open "$IMG" "$n" || return 1
	mm=$(_majmin "$n")
	_diag "/dev/mapper/$n is $mm"
	_container "$mm" "$WORK/src" clean
	out=$?
	_diag "container exit $out:" "$(cat "$WORK/ct.log")"
	[ "$out" = 0 ] || rc=1
	[ "$(dmsetup info -c --noheadings -o open "$n" | tr -d ' ')" = 0 ] ||
		{ _diag "/dev/mapper/$n still open after the container exited"; rc=1; }
	grep -q "/dev/mapper/$n\|^/dev/dm-" /proc/mounts && { _diag "mounted on the host: $(grep dm- /proc/mounts)"; rc=1; }
	"$Q2S" close "$n" || rc=1
	out=$(qemu-img check "$IMG" 2>&1) || { _diag "qemu-img check:" "$out"; rc=1; }
	sha256sum <"$WORK/base.qcow2" | cmp -s - "$WORK/base.sum" || { _diag "the base image changed"; rc=1; }

	# read back: the target, read-only
	if "$Q2S" open -r "$IMG" "${n}r"; then
		if mount -o ro,noload "/dev/mapper/${n}r" "$MNT"; then
			_check_files "$MNT" || rc=1
			umount "$MNT"
		else
			_diag "cannot mount the read-only reopen"
			rc=1
		fi
		"$Q2S" close "${n}r" || rc=1
	else
		rc=1
	fi
	# read back: QEMU
	qemu-img convert -O raw "$IMG" "$WORK/after.raw" || return 1
	if mount -o ro,loop,noload "$WORK/after.raw" "$MNT"; then
		_check_files "$MNT" || rc=1
		umount "$MNT"
	else
		_diag "cannot mount QEMU's view of the image"
		rc=1
	fi
	rm -f "$WORK/after.raw"
	return $rc
}

t_killed_container()
{
	local rc=0 n=${P}k mm out
	"$Q2S" open "$IMG" "$n" || return 1
	mm=$(_majmin "$n")
	rm -rf "$WORK/src2" && mkdir -p "$WORK/src2/data" || return 1
	for i in 1 2 3 4 5 6; do
		head -c $((i * 65536 + 100)) /dev/urandom >"$WORK/src2/data/k$i" || return 1
	done
	(cd "$WORK/src2/data" && sha256sum ./* >"$WORK/src2/new.sums")
	# the second container finds file3 gone: give it base sums without it
	grep -v ' \./file3$' "$WORK/src/base.sums" >"$WORK/src2/base.sums"
	rm -f "$WORK/ready"
	unshare --mount --pid --fork --propagation private --kill-child=KILL \
		bash -c "$CT_SCRIPT" container \
		"$mm" "$WORK/src2" killed "$WORK/ready" >"$WORK/ct.log" 2>&1 </dev/null &
	CT_PID=$!
	for _ in $(seq 600); do
		[ -e "$WORK/ready" ] && break
		kill -0 "$CT_PID" 2>/dev/null || break
		sleep 0.2
	done
	if [ ! -e "$WORK/ready" ]; then
		_diag "container not ready:" "$(cat "$WORK/ct.log")"
		rc=1
	fi
	[ "$(dmsetup info -c --noheadings -o open "$n" | tr -d ' ')" -ge 1 ] ||
		{ _diag "device not held while the container runs"; rc=1; }
	kill -KILL "$CT_PID"
	wait "$CT_PID" 2>/dev/null
	CT_PID=""
	_close "$n" || rc=1
	out=$(qemu-img check "$IMG" 2>&1) || { _diag "qemu-img check:" "$out"; rc=1; }
	"$Q2S" open -r "$IMG" "${n}r" || return 1
	out=$(e2fsck -f -n "/dev/mapper/${n}r" 2>&1) || { _diag "e2fsck -n:" "$out"; rc=1; }
	if mount -o ro,noload "/dev/mapper/${n}r" "$MNT"; then
		(cd "$MNT/new" && sha256sum -c --quiet "$WORK/src2/new.sums") ||
			{ _diag "fsynced files differ"; rc=1; }
		umount "$MNT"
	else
		_diag "cannot mount after the killed container"
		rc=1
	fi
	"$Q2S" close "${n}r" || rc=1
	return $rc
}

# Each step needs the one before.
subtest_gate()
{
	return "$2"
}

TESTS="t_setup t_clean_container t_killed_container"
ktap_header
ktap_plan "$(wc -w <<<"$TESTS")"
# shellcheck disable=SC2086
ktap_run_subtests container $TESTS
ktap_finish
