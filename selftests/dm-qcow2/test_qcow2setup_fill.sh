#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_qcow2setup_fill.sh - a file-backed image opened small is filled to its
# whole virtual size through the mapping.
#
# qcow2setup open extends a writable image file sparsely to the most the
# image can need, and close cuts it back to the end of its last cluster in
# use (qcow2setup(8), ROOM TO GROW).  For each image (qemu-img create, the
# file starts at a few hundred KiB):
#
#   - 64 MiB, 64 KiB clusters (the default);
#   - 32 MiB, 4 KiB clusters (many L2 tables and refcount blocks);
#   - 8 MiB, 512-byte clusters with 64-bit refcounts (a refcount block
#     covers 64 clusters: the refcount table has to move to a bigger one
#     while the image fills);
#
# the test checks that open extends the file without using space, writes a
# random pattern over the whole device (O_DIRECT, then fsync), reads it back
# through the device, checks the target's status (no no_space, no I/O
# errors), closes, and then: the file is cut back (smaller than while
# mapped, at least the virtual size, and equal to the image end QEMU
# computes), `qemu-img check` is clean and `qemu-img compare` finds the
# image identical to the pattern.  A last pass rewrites the full image with
# fio (verify=crc32c) after a reopen: no growth then.
#
# The image files live on ext4 on a spare disk when there is one (direct
# I/O loop devices, real sparse files), else on tmpfs.

# shellcheck disable=SC2317 # functions called indirectly
. "$(dirname "$0")/test_common.sh"

TOP=$(cd "$(dirname "$0")/../.." && pwd)
Q2S=${QCOW2SETUP:-$TOP/tools/qcow2setup/qcow2setup}
[ -x "$Q2S" ] || _skip "qcow2setup is not built ($Q2S): run 'make -C tools/qcow2setup' on the host"
_require_root
_require_cmd qemu-img python3 cmp stat du blockdev
_require_module

WORK=$(_scratch_dir)
[ -d "$WORK" ] || _fail "no scratch directory"
P="q2sf$$"
DIR=$WORK
MNT=""
MNT_DISK=""

_close_all()
{
	local n
	for n in $(dmsetup ls 2>/dev/null | awk -v p="$P" 'index($1, p) == 1 { print $1 }'); do
		"$Q2S" close --force "$n" >/dev/null 2>&1 || dmsetup remove --retry "$n" >/dev/null 2>&1
	done
}

_fill_cleanup()
{
	_close_all
	if [ -n "$MNT" ]; then
		umount "$MNT" 2>/dev/null
		wipefs -q -a "$MNT_DISK" >/dev/null 2>&1
	fi
	return 0
}
_on_exit _fill_cleanup

if disk=$(_disk 1 2>/dev/null) && command -v mkfs.ext4 >/dev/null &&
   mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1 "$disk" >/dev/null 2>&1 &&
   mkdir -p "$WORK/mnt" && mount "$disk" "$WORK/mnt"; then
	MNT=$WORK/mnt MNT_DISK=$disk DIR=$MNT
	_diag "image files on ext4 on $disk"
else
	_diag "image files on tmpfs (no spare disk)"
fi

# _pattern FILE SIZE SEED: random bytes
_pattern()
{
	python3 -c '
import random, sys
r = random.Random(int(sys.argv[3]))
n = int(sys.argv[2])
with open(sys.argv[1], "wb") as f:
    while n > 0:
        k = min(n, 1 << 20)
        f.write(r.randbytes(k))
        n -= k
' "$@"
}

_alloc_kib()
{
	du -k "$1" | cut -f1
}

# _fill IMG SIZE CREATE_OPTS SEED
_fill()
{
	local img=$DIR/$1 vsize=$2 opts=$3 seed=$4 n=${P}${4} rc=0
	local orig grown after dev=/dev/mapper/${P}${4} out end
	qemu-img create -q -f qcow2 ${opts:+-o "$opts"} "$img" "$vsize" || return 1
	_pattern "$WORK/pat.raw" "$vsize" "$seed" || return 1
	orig=$(stat -c %s "$img")
	_diag "$1: $vsize bytes, ${opts:-defaults}: file $orig bytes"
	"$Q2S" open "$img" "$n" || return 1
	grown=$(stat -c %s "$img")
	_diag "open: file $grown bytes, $(_alloc_kib "$img") KiB allocated"
	[ "$grown" -gt "$vsize" ] || { _diag "the file was not extended past the virtual size"; rc=1; }
	[ "$(_alloc_kib "$img")" -lt $((vsize / 1024 / 4)) ] ||
		{ _diag "the extension used space: $(_alloc_kib "$img") KiB"; rc=1; }
	[ "$(blockdev --getsize64 "$dev")" = "$vsize" ] || { _diag "device size $(blockdev --getsize64 "$dev")"; rc=1; }
	if ! out=$(dd if="$WORK/pat.raw" of="$dev" bs=1M oflag=direct conv=fsync status=none 2>&1); then
		_diag "filling $dev failed: $out"
		rc=1
	fi
	blockdev --flushbufs "$dev"
	cmp "$dev" "$WORK/pat.raw" || { _diag "read back through the device differs"; rc=1; }
	out=$("$Q2S" status --json "$n")
	python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
bad = [k for k in ("no_space", "corrupt") if d.get(k)]
if d.get("io_errors"): bad.append("io_errors=%s" % d["io_errors"])
if d.get("mode") != "rw": bad.append("mode=%s" % d.get("mode"))
if bad:
    print("# status: " + " ".join(bad)); sys.exit(1)
' <<<"$out" || rc=1
	"$Q2S" close "$n" || { _diag "close failed"; return 1; }
	after=$(stat -c %s "$img")
	end=$(qemu-img check --output=json "$img" 2>/dev/null |
		python3 -c 'import json,sys; print(json.load(sys.stdin).get("image-end-offset", -1))')
	_diag "close: file $after bytes ($(_alloc_kib "$img") KiB allocated), image end $end"
	[ "$after" -lt "$grown" ] || { _diag "the file was not cut back"; rc=1; }
	[ "$after" -ge "$vsize" ] || { _diag "the file is smaller than the data written"; rc=1; }
	[ "$after" = "$end" ] || { _diag "file size $after, QEMU's image end $end"; rc=1; }
	out=$(qemu-img check "$img" 2>&1) || { _diag "qemu-img check:" "$out"; rc=1; }
	out=$(qemu-img compare -f qcow2 -F raw "$img" "$WORK/pat.raw" 2>&1) ||
		{ _diag "qemu-img compare: $out"; rc=1; }
	return $rc
}

t_fill_64k()
{
	_fill fill64k.qcow2 $((64 << 20)) "" 1
}

t_fill_4k()
{
	_fill fill4k.qcow2 $((32 << 20)) cluster_size=4096 2
}

t_fill_512()
{
	_fill fill512.qcow2 $((8 << 20)) cluster_size=512,refcount_bits=64 3
}

# The full 64 KiB image rewritten with fio (verify) after a reopen: no new
# clusters, so the file must not grow.
t_rewrite_fio()
{
	local img=$DIR/fill64k.qcow2 n=${P}r rc=0 before out
	before=$(stat -c %s "$img")
	"$Q2S" open "$img" "$n" || return 1
	out=$(fio --name=rewrite --filename="/dev/mapper/$n" --rw=write --bs=256k --direct=1 \
		--ioengine=psync --size=64M --verify=crc32c --do_verify=1 --end_fsync=1 \
		--output-format=terse 2>&1) || { _diag "fio:" "$out"; rc=1; }
	"$Q2S" close "$n" || return 1
	[ "$(stat -c %s "$img")" = "$before" ] ||
		{ _diag "file $before bytes before, $(stat -c %s "$img") after a rewrite"; rc=1; }
	out=$(qemu-img check "$img" 2>&1) || { _diag "qemu-img check:" "$out"; rc=1; }
	return $rc
}

subtest_skip()
{
	if [ "$1" = t_rewrite_fio ] && ! command -v fio >/dev/null; then
		echo "no fio"
		return 0
	fi
	return 1
}

subtest_done()
{
	[ "$2" = 0 ] || _close_all
	rm -f "$WORK/pat.raw"
}

TESTS="t_fill_64k t_fill_4k t_fill_512 t_rewrite_fio"
ktap_header
ktap_plan "$(wc -w <<<"$TESTS")"
# shellcheck disable=SC2086
ktap_run_subtests qcow2setup_fill $TESTS
ktap_finish
