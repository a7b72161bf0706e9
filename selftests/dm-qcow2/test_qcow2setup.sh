#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_qcow2setup.sh - the qcow2setup tool (tools/qcow2setup) end to end.
#
# Needs root, the module, qemu-img/qemu-io and the tool built on the host
# (tools/qcow2setup/qcow2setup, or $QCOW2SETUP; `make -C tools/qcow2setup`):
# the guest sees the source tree read-only, so the test does not build it and
# skips when it is missing.
#
# Mapping (read-only; every device is compared byte for byte with
# `qemu-img convert -O raw` of the same image or snapshot):
#   - a plain image, opened and closed; table, status, loop devices;
#   - a chain "top image.qcow2" -> absolute name of d/mid.qcow2 -> relative
#     name "../base dir/base.raw" (raw), opened by a relative path from a
#     directory where resolving against the working directory would fail;
#   - internal snapshots by ID, by name (with a smaller disk size than the
#     active image), an ambiguous argument (a snapshot named like another's
#     ID), --snapshot-id, a missing snapshot;
#   - an image given as a block device (a loop the test attaches), two
#     read-only mappings of one image, and the refusal of a writable one;
#   - a file whose size is not a multiple of 512 (compressed), --no-udev-wait,
#     --cache-size, --dry-run, direct I/O on ext4 (when a test disk exists).
# Errors, each with its exit code and nothing left behind (no dm device, no
# loop device on the test's files, no state file): nonexistent image, a raw
# file as image, missing backing file, loops in the chain (self and a->b->a),
# unknown incompatible feature, encryption, external data file, missing
# backing format, a chain of 1024 backing files (and 1023 accepted), a
# table only the kernel refuses (512-byte clusters on 4 KiB blocks), bad
# names and options.
# Read-write (target >= 1.1; with 1.0 the refusal is checked instead): the
# file is extended for writing, the device is writable, writes through it
# match the same writes on a raw copy, QEMU cannot open the image (not even
# qemu-img info without -U) and no second mapping is allowed while mapped;
# close cuts the file back, qemu-img check is clean and qemu-img compare
# agrees; --lazy-refcounts reaches the table and leaves a clean image;
# --snapshot without --read-only and --lazy-refcounts on a v2 image are
# refused.
# Locks: open refuses an image `qemu-io` holds for writing; while mapped,
# qemu-img info works, but qemu-io cannot open the image (nor its backing
# file) for writing, also after the tool exited (the locks live in the loop
# devices' open files); after close qemu-io can write again.
# close: detaches the loops, refuses a device not made by qcow2setup unless
# --force, refuses an open device, reports a missing one.
# status/list/info: human output and --json (python3 -m json.tool, and
# fields checked with python).
# stats/commit (target >= 1.2; before, the refusal is checked): every line
# of stats is "name value" and has "commits"; a 64 KiB direct write and
# commit make "commits" grow; stats --json agrees; with lazy refcounts commit
# clears the dirty bit and qemu-img check -U is clean while mapped; usage
# errors, a missing device, a device that is not qcow2.
#
# Not in TEST_PROGS of the Makefile yet: the tool must be built on the host
# first (make check should run `make -C tools/qcow2setup`).
#
# Measured in the TCG test VM (2 vCPUs): ~3-3.5 min on 6.1 and 6.12, of which
# ~45 s build the images (each qemu-img/qemu-io run costs 0.5-4 s there) and
# most of the rest is udev handling the device events open/close wait for.
# With QCOW2_SHARD=K/N only subtests K, K+N, ... of $TESTS run (the images
# are made in every shard); make check splits them between its kernels.

# shellcheck disable=SC2317 # subtests are called through "$t"
. "$(dirname "$0")/test_common.sh"

TOP=$(cd "$(dirname "$0")/../.." && pwd)
Q2S=${QCOW2SETUP:-$TOP/tools/qcow2setup/qcow2setup}
[ -x "$Q2S" ] || _skip "qcow2setup is not built ($Q2S): run 'make -C tools/qcow2setup' on the host"
_require_root
_require_cmd qemu-img qemu-io python3 cmp losetup dmsetup truncate blockdev stat
_require_module

WORK=$(_scratch_dir)
[ -d "$WORK" ] || _fail "no scratch directory"
export WORK
P="q2st$$"			# prefix of every device name made here
BG_PIDS=()
MANUAL_LOOPS=()
MNT=""
MNT_DISK=""

# Undo what a failed subtest may have left (run by test_common's exit trap).
_q2s_cleanup()
{
	local n l
	for l in "${BG_PIDS[@]}"; do
		kill "$l" 2>/dev/null
		wait "$l" 2>/dev/null
	done
	for n in $(dmsetup ls 2>/dev/null | awk -v p="$P" 'index($1, p) == 1 { print $1 }'); do
		"$Q2S" close --force "$n" >/dev/null 2>&1 || dmsetup remove --retry "$n" >/dev/null 2>&1
	done
	for l in "${MANUAL_LOOPS[@]}"; do
		losetup -d "$l" 2>/dev/null
	done
	if [ -n "$MNT" ]; then
		umount "$MNT" 2>/dev/null
		wipefs -q -a "$MNT_DISK" >/dev/null 2>&1
	fi
	return 0
}
_on_exit _q2s_cleanup

# _q2s ARGS...: run the tool; sets RC, OUT (stdout) and ERR (stderr).
_q2s()
{
	OUT=$("$Q2S" "$@" 2>"$WORK/.err")
	RC=$?
	ERR=$(<"$WORK/.err")
}

# _imatch TEXT ERE: case-insensitive match without a fork
_imatch()
{
	local r
	shopt -s nocasematch
	[[ $1 =~ $2 ]]
	r=$?
	shopt -u nocasematch
	return $r
}

# _expect RC ERE ARGS...: the tool exits with RC and stderr matches ERE.
_expect()
{
	local want=$1 re=$2
	shift 2
	_q2s "$@"
	if [ "$RC" != "$want" ]; then
		_diag "qcow2setup $* exited $RC, expected $want" "stderr: $ERR"
		return 1
	fi
	if [ -n "$re" ] && ! _imatch "$ERR" "$re"; then
		_diag "qcow2setup $*: stderr does not match /$re/:" "$ERR"
		return 1
	fi
	return 0
}

# Loop devices whose backing file is under $WORK (or $MNT).
_our_loops()
{
	local f b
	for f in /sys/block/loop*/loop/backing_file; do
		[ -r "$f" ] || continue
		b=$(cat "$f" 2>/dev/null)
		case "$b" in
		"$WORK"/* | ${MNT:-/nonexistent}/*) echo "${f#/sys/block/}" | cut -d/ -f1 ;;
		esac
	done
}

# _nothing_left: no device with the prefix, no loop device on our files
# (other than KEEP_LOOPS), no state file of ours.
_nothing_left()
{
	local rc=0 n loops
	for n in $(dmsetup ls 2>/dev/null | awk -v p="$P" 'index($1, p) == 1 { print $1 }'); do
		_diag "device $n left behind"
		rc=1
	done
	loops=$(_our_loops | sort)
	if [ -n "$loops" ] && [ "$loops" != "${KEEP_LOOPS:-}" ]; then
		_diag "loop devices left behind: ${loops//$'\n'/ } ($(losetup -a 2>/dev/null | tr '\n' ';'))"
		rc=1
	fi
	for n in /run/qcow2setup/QCOW2-*-"$P"*; do
		[ -e "$n" ] || continue
		_diag "state file left behind: $n"
		rc=1
	done
	return $rc
}

# _cmp_ref NAME REF: /dev/mapper/NAME equals REF (size and bytes).
_cmp_ref()
{
	local dev=/dev/mapper/$1 ref=$2 ds rs out
	[ -b "$dev" ] || { _diag "$dev does not exist"; return 1; }
	ds=$(blockdev --getsize64 "$dev") rs=$(stat -c %s "$ref")
	[ "$ds" = "$rs" ] || { _diag "$dev: $ds bytes, reference $rs"; return 1; }
	out=$(cmp "$dev" "$ref" 2>&1) || { _diag "$dev differs: $out"; return 1; }
	return 0
}

# _ref IMG OUT [convert args]: qemu-img's view of the image.
_ref()
{
	local img=$1 out=$2
	shift 2
	qemu-img convert -U "$@" -O raw "$img" "$out" || { _diag "qemu-img convert $img failed"; return 1; }
}

# _json PYEXPR...: parse the JSON in $OUT and assert python expressions
# over it (d = the document); prints the failing one.
_json()
{
	python3 -c '
import json, sys, os
try:
    d = json.loads(sys.stdin.read())
except Exception as e:
    print("# invalid JSON: %s" % e); sys.exit(1)
for expr in sys.argv[1:]:
    try:
        ok = eval(expr)
    except Exception as e:
        ok = False; print("# %s: %r" % (expr, e))
    if not ok:
        print("# JSON check failed: %s" % expr); sys.exit(1)
' "$@" <<<"$OUT"
}

_qio()
{
	local img=$1 fmt=$2
	shift 2
	local a=() c
	for c in "$@"; do a+=(-c "$c"); done
	qemu-io -f "$fmt" "${a[@]}" "$img" >/dev/null || { _diag "qemu-io $img $* failed"; return 1; }
}

# ---------------------------------------------------------------------------
# Images

_gen_images()
{
	cd "$WORK" || return 1
	# plain: v3, 64 KiB clusters, data, a zero cluster, a partial cluster
	qemu-img create -q -f qcow2 plain.qcow2 24M &&
	_qio plain.qcow2 qcow2 'write -P 0x5a 0 100k' 'write -P 0xa5 3M 64k' \
		'write -z 1M 64k' 'write -P 0x77 25164288 1k' || return 1
	_ref plain.qcow2 plain.raw || return 1

	# chain: raw base <- qcow2 (4k clusters, relative name with "..")
	#        <- "top image.qcow2" (absolute name), top larger than base
	mkdir -p "base dir" d x/y
	truncate -s 8M "base dir/base.raw"
	_qio "base dir/base.raw" raw 'write -P 0x11 0 8M' || return 1
	qemu-img create -q -f qcow2 -o cluster_size=4096 -b "../base dir/base.raw" -F raw \
		d/mid.qcow2 16M &&
	_qio d/mid.qcow2 qcow2 'write -P 0x22 1M 1M' 'write -z 7M 2M' || return 1
	qemu-img create -q -f qcow2 -b "$WORK/d/mid.qcow2" -F qcow2 "top image.qcow2" 20M &&
	_qio "top image.qcow2" qcow2 'write -P 0x33 1536k 64k' 'write -P 0x34 17M 4k' || return 1
	_ref "top image.qcow2" chain.raw || return 1

	# snapshots: "first" (ID 1, 8 MiB), then grown to 12 MiB, "second"
	# (ID 2), and "2" (ID 3): "2" is ambiguous
	qemu-img create -q -f qcow2 snap.qcow2 8M &&
	_qio snap.qcow2 qcow2 'write -P 0x41 0 1M' &&
	qemu-img snapshot -c first snap.qcow2 &&
	qemu-img resize -q snap.qcow2 12M &&
	_qio snap.qcow2 qcow2 'write -P 0x42 512k 1M' 'write -P 0x43 11M 64k' &&
	qemu-img snapshot -c second snap.qcow2 &&
	_qio snap.qcow2 qcow2 'write -P 0x44 0 64k' &&
	qemu-img snapshot -c 2 snap.qcow2 &&
	_qio snap.qcow2 qcow2 'write -P 0x45 4M 64k' || return 1
	# qemu-img convert -l keeps the active image's size (12 MiB); the
	# snapshot's disk was 8 MiB, which is what the target maps: the rest
	# of QEMU's view must be zeros
	_ref snap.qcow2 snap1.raw -l snapshot.id=1 &&
	cmp -s -n 4194304 -i 8388608 snap1.raw /dev/zero &&
	truncate -s 8M snap1.raw &&
	_ref snap.qcow2 snap2.raw -l snapshot.name=second &&
	_ref snap.qcow2 snap3.raw -l snapshot.id=3 || return 1

	# errors
	qemu-img create -q -f qcow2 -u -b nothere.qcow2 -F qcow2 missing.qcow2 4M &&
	qemu-img create -q -f qcow2 -u -b loopb.qcow2 -F qcow2 loopa.qcow2 4M &&
	qemu-img create -q -f qcow2 -u -b loopa.qcow2 -F qcow2 loopb.qcow2 4M &&
	cp plain.qcow2 self.qcow2 &&
	qemu-img rebase -u -b self.qcow2 -F qcow2 self.qcow2 &&
	cp plain.qcow2 unknown.qcow2 &&
	qemu-img create -q -f qcow2 -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10 \
		--object secret,id=s0,data=pw enc.qcow2 4M &&
	qemu-img create -q -f qcow2 -o data_file=ext.data ext.qcow2 4M &&
	qemu-img create -q -f qcow2 -b "base dir/base.raw" -F raw nofmt.qcow2 8M || return 1
	python3 - "$WORK" <<'EOF' || return 1
import struct, sys, os
w = sys.argv[1]
# unknown incompatible feature bit 6
with open(os.path.join(w, 'unknown.qcow2'), 'r+b') as f:
    f.seek(72); f.write(struct.pack('>Q', 1 << 6))
# drop the backing format: retype its header extension to an unknown one
with open(os.path.join(w, 'nofmt.qcow2'), 'r+b') as f:
    h = bytearray(f.read(65536))
    off = struct.unpack('>I', h[100:104])[0]
    while True:
        t, l = struct.unpack('>II', h[off:off + 8])
        if t == 0:
            sys.exit('no backing format extension')
        if t == 0xe2792aca:
            h[off:off + 4] = struct.pack('>I', 0x7e570001)
            break
        off += 8 + ((l + 7) & ~7)
    f.seek(0); f.write(h)

# Chains of minimal images (512-byte clusters, 3 clusters each) for the
# 1023-backing-file limit: long1023/c0000 has 1023 backing files,
# long1024/c0000 has 1024.
def img(path, backing):
    h = bytearray(1536)
    ext = b''
    if backing:
        ext = struct.pack('>II', 0xe2792aca, 5) + b'qcow2\0\0\0'
    ext += struct.pack('>II', 0, 0)
    name_off = 112 + len(ext)
    struct.pack_into('>IIQIIQIIQQIIQQQQII', h, 0, 0x514649fb, 3,
                     name_off if backing else 0, len(backing) if backing else 0,
                     9, 512, 0, 1, 512, 1024, 1, 0, 0, 0, 0, 0, 4, 112)
    h[112:112 + len(ext)] = ext
    if backing:
        h[name_off:name_off + len(backing)] = backing.encode()
    struct.pack_into('>Q', h, 1024, 0)  # empty refcount table
    with open(path, 'wb') as f:
        f.write(h)
for total, d in ((1024, 'long1023'), (1025, 'long1024')):
    os.makedirs(os.path.join(w, d), exist_ok=True)
    for i in range(total):
        nxt = 'c%04d.qcow2' % (i + 1) if i + 1 < total else None
        img(os.path.join(w, d, 'c%04d.qcow2' % i), nxt)
EOF
	# compressed clusters written by qemu-io: the file ends in the middle
	# of a sector (qemu-img convert -c would pad it)
	python3 -c 'import random,sys; sys.stdout.buffer.write(random.Random(3).randbytes(4093))' >pat &&
	qemu-img create -q -f qcow2 comp.qcow2 4M &&
	_qio comp.qcow2 qcow2 'write -c -s pat 0 64k' 'write -c -P 0x11 64k 64k' \
		'write -P 0x22 1M 4k' 'write -c -s pat 2M 64k' &&
	_ref comp.qcow2 comp.raw || return 1
	cp plain.qcow2 lock.qcow2 && cp plain.qcow2 rw.qcow2 || return 1
	qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 1M &&
	qemu-img create -q -f qcow2 -o cluster_size=512 small.qcow2 1M || return 1
	cd /
}

# ---------------------------------------------------------------------------
# Subtests

t_usage()
{
	local rc=0
	_expect 0 "" --help || rc=1
	grep -q 'Exit status' <<<"$OUT" || { _diag "--help lacks the exit status"; rc=1; }
	_expect 0 "" --version || rc=1
	grep -Eq '^qcow2setup [0-9]' <<<"$OUT" || { _diag "--version: $OUT"; rc=1; }
	_expect 1 "unknown command" frobnicate || rc=1
	_expect 1 "" || rc=1
	_expect 1 "needs IMAGE and NAME" open "$WORK/plain.qcow2" || rc=1
	_expect 1 "unknown option" open --bogus "$WORK/plain.qcow2" "${P}u" || rc=1
	_expect 1 "does not apply" open --json "$WORK/plain.qcow2" "${P}u" || rc=1
	_expect 1 "invalid device name" open -r "$WORK/plain.qcow2" "a/b" || rc=1
	_expect 1 "cache-size" open -r --cache-size 1k "$WORK/plain.qcow2" "${P}u" || rc=1
	_expect 1 "cache-size" open -r --cache-size 12X "$WORK/plain.qcow2" "${P}u" || rc=1
	_expect 1 "read-write" open -r --lazy-refcounts "$WORK/plain.qcow2" "${P}u" || rc=1
	_nothing_left || rc=1
	return $rc
}

t_plain()
{
	local rc=0 n=${P}p loops tbl
	_expect 0 "" open --read-only "$WORK/plain.qcow2" "$n" || return 1
	_cmp_ref "$n" "$WORK/plain.raw" || rc=1
	loops=$(_our_loops)
	[ "$(echo "$loops" | wc -w)" = 1 ] || { _diag "expected one loop device, got: $loops"; rc=1; }
	[ "$(cat /sys/block/"$loops"/loop/autoclear 2>/dev/null)" = 1 ] ||
		{ _diag "$loops: autoclear not set"; rc=1; }
	[ "$(cat /sys/block/"$loops"/ro 2>/dev/null)" = 1 ] || { _diag "$loops: not read-only"; rc=1; }
	_diag "loop $loops direct I/O: $(cat /sys/block/"$loops"/loop/dio 2>/dev/null) (tmpfs)"
	tbl=$(dmsetup table "$n")
	[ "$tbl" = "0 49152 qcow2 $(cat /sys/block/"$loops"/dev)" ] || { _diag "table: $tbl"; rc=1; }
	dmsetup info -c --noheadings -o uuid "$n" | grep -q "^QCOW2-.*-$n\$" ||
		{ _diag "uuid: $(dmsetup info -c --noheadings -o uuid "$n")"; rc=1; }
	[ "$(blockdev --getro "/dev/mapper/$n")" = 1 ] || { _diag "device not read-only"; rc=1; }
	_expect 4 "already exists" open -r "$WORK/plain.qcow2" "$n" || rc=1
	_expect 0 "" close "$n" || rc=1
	[ ! -e "/dev/mapper/$n" ] || { _diag "/dev/mapper/$n still there"; rc=1; }
	_nothing_left || rc=1
	return $rc
}

t_chain()
{
	local rc=0 n=${P}c
	# relative image path, from a directory where resolving backing names
	# against the working directory would find nothing
	(cd "$WORK/x/y" && "$Q2S" open -r "../../top image.qcow2" "$n") ||
		{ _diag "open of the chain failed"; return 1; }
	_cmp_ref "$n" "$WORK/chain.raw" || rc=1
	[ "$(_our_loops | wc -w)" = 3 ] || { _diag "expected 3 loops: $(_our_loops)"; rc=1; }
	dmsetup table "$n" | grep -Eq '^0 40960 qcow2 [0-9]+:[0-9]+ 6 backing qcow2 [0-9]+:[0-9]+ backing raw [0-9]+:[0-9]+$' ||
		{ _diag "table: $(dmsetup table "$n")"; rc=1; }
	_q2s status --json "$n"
	_json 'd["nr_layers"] == 3' \
		'[l["format"] for l in d["layers"]] == ["qcow2", "qcow2", "raw"]' \
		'os.path.realpath(d["layers"][0]["backing_file"]) == os.path.realpath(os.environ["WORK"] + "/top image.qcow2")' \
		'os.path.realpath(d["layers"][2]["backing_file"]) == os.path.realpath(os.environ["WORK"] + "/base dir/base.raw")' \
		'd["layers"][0]["path"] == os.environ["WORK"] + "/x/y/../../top image.qcow2"' \
		'd["virtual_size"] == 20 << 20 and d["cluster_size"] == 65536' \
		'all(l["read_only"] for l in d["layers"])' || rc=1
	_expect 0 "" close "$n" || rc=1
	_nothing_left || rc=1
	return $rc
}

t_snapshots()
{
	local rc=0 n=${P}s
	_expect 0 "" open -r --snapshot 1 "$WORK/snap.qcow2" "$n" || return 1
	_cmp_ref "$n" "$WORK/snap1.raw" || rc=1
	dmsetup table "$n" | grep -q ' 2 snapshot 1$' || { _diag "table: $(dmsetup table "$n")"; rc=1; }
	_expect 0 "" close "$n" || rc=1
	_expect 0 "" open -r --snapshot second "$WORK/snap.qcow2" "$n" || return 1
	_cmp_ref "$n" "$WORK/snap2.raw" || rc=1
	_expect 0 "" close "$n" || rc=1
	# "2" is the ID of "second" and the name of ID 3
	_expect 1 "ambiguous" open -r -s 2 "$WORK/snap.qcow2" "$n" || rc=1
	_expect 0 "" open -r --snapshot-name 2 "$WORK/snap.qcow2" "$n" || return 1
	_cmp_ref "$n" "$WORK/snap3.raw" || rc=1
	_expect 0 "" close "$n" || rc=1
	_expect 0 "" open -r --snapshot-id 2 "$WORK/snap.qcow2" "$n" || return 1
	_cmp_ref "$n" "$WORK/snap2.raw" || rc=1
	_expect 0 "" close "$n" || rc=1
	_expect 5 "no snapshot" open -r --snapshot nosuch "$WORK/snap.qcow2" "$n" || rc=1
	_nothing_left || rc=1
	return $rc
}

t_info()
{
	local rc=0
	_expect 0 "" info "$WORK/top image.qcow2" || return 1
	for re in 'format: +qcow2, version 3' 'virtual size: +20 MiB' 'cluster size: +65536' \
		'refcount bits: +16' 'compression type: +deflate' "backing file: +$WORK/d/mid.qcow2 \\(format qcow2\\)" \
		'backing chain: +3 layers' "2 +raw +$WORK/d/../base dir/base.raw"; do
		grep -Eq -- "$re" <<<"$OUT" || { _diag "info lacks /$re/:" "$OUT"; rc=1; }
	done
	_expect 0 "" info --json "$WORK/top image.qcow2" || rc=1
	python3 -m json.tool <<<"$OUT" >/dev/null || { _diag "info --json is not JSON"; rc=1; }
	_json 'len(d["layers"]) == 3 and d["error"] is None' \
		'[l["format"] for l in d["layers"]] == ["qcow2", "qcow2", "raw"]' \
		'd["layers"][1]["cluster_size"] == 4096 and d["layers"][1]["backing_name"] == os.environ["WORK"] + "/d/mid.qcow2"' \
		'd["layers"][2]["backing_name"] == "../base dir/base.raw"' \
		'd["layers"][2]["path"] == os.environ["WORK"] + "/d/../base dir/base.raw"' \
		'd["layers"][0]["features"]["dirty"] is False and d["layers"][0]["refcount_bits"] == 16' \
		'd["layers"][0]["compression_type"] == "deflate" and d["layers"][0]["version"] == 3' || rc=1
	_expect 0 "" info --json "$WORK/snap.qcow2" || rc=1
	_json '[(s["id"], s["name"]) for s in d["layers"][0]["snapshots"]] == [("1", "first"), ("2", "second"), ("3", "2")]' \
		'd["layers"][0]["snapshots"][0]["disk_size"] == 8 << 20' \
		'd["layers"][0]["snapshots"][1]["disk_size"] == 12 << 20' || rc=1
	_expect 0 "" info "$WORK/snap.qcow2" || rc=1
	grep -Eq '^ +1 +first +8 MiB' <<<"$OUT" || { _diag "snapshot list:" "$OUT"; rc=1; }
	# a broken chain: partial output, the error in JSON, the exit code
	_expect 5 "not found" info --json "$WORK/missing.qcow2" || rc=1
	_json 'len(d["layers"]) == 1 and "not found" in d["error"]' || rc=1
	_expect 2 "unsupported" info "$WORK/enc.qcow2" || rc=1
	_nothing_left || rc=1
	return $rc
}

t_status_list()
{
	local rc=0 n=${P}l uuid
	_expect 0 "" open -r --cache-size 1M "$WORK/plain.qcow2" "$n" || return 1
	dmsetup table "$n" | grep -q ' 2 cache_size 1048576$' || { _diag "table: $(dmsetup table "$n")"; rc=1; }
	dd if=/dev/mapper/$n of=/dev/null bs=64k count=4 status=none
	_expect 0 "" status "$n" || rc=1
	for re in "/dev/mapper/$n is active \\(read-only\\)" 'virtual size: +24 MiB' 'cluster size: +65536' \
		'layers: +1' 'cache: +[0-9]+/256 slices' 'I/O errors: +0' "$WORK/plain.qcow2"; do
		grep -Eq -- "$re" <<<"$OUT" || { _diag "status lacks /$re/:" "$OUT"; rc=1; }
	done
	_expect 0 "" status --json "$n" || rc=1
	python3 -m json.tool <<<"$OUT" >/dev/null || { _diag "status --json is not JSON"; rc=1; }
	_json 'd["mode"] == "ro" and d["read_only"] and d["qcow2setup"]' \
		'd["virtual_size"] == 24 << 20 and d["sectors"] == 49152' \
		'd["cache_size"] == 1 << 20 and d["cache"]["slices"] == 256 and not d["cache_size_default"]' \
		'd["open_reads"] >= 1 and d["metadata_reads"] >= d["open_reads"]' \
		'd["cache"]["hits"] + d["cache"]["misses"] >= 1 and d["io_errors"] == 0' \
		'd["layers"][0]["path"] == os.environ["WORK"] + "/plain.qcow2"' || rc=1
	_expect 0 "" list || rc=1
	grep -Eq "^$n +ro +24 MiB +1 +$WORK/plain.qcow2" <<<"$OUT" || { _diag "list:" "$OUT"; rc=1; }
	_expect 0 "" list --json || rc=1
	_json "[x['nr_layers'] for x in d['devices'] if x['name'] == '$n'] == [1]" || rc=1
	# without the state file the paths come from the loop devices
	uuid=$(dmsetup info -c --noheadings -o uuid "$n")
	rm -f "/run/qcow2setup/$uuid"
	_expect 0 "" status --json "$n" || rc=1
	_json 'os.path.realpath(d["layers"][0]["path"]) == os.path.realpath(os.environ["WORK"] + "/plain.qcow2")' || rc=1
	_expect 0 "" close "$n" || rc=1
	_expect 5 "no device" status "$n" || rc=1
	_expect 0 "" list --json || rc=1
	_json "'$n' not in [x['name'] for x in d['devices']]" || rc=1
	_nothing_left || rc=1
	return $rc
}

t_errors()
{
	local rc=0 n=${P}e l=""
	_expect 5 "No such file" open -r "$WORK/nonexistent.qcow2" "$n" || rc=1
	_expect 2 "not a qcow2 image" open -r "$WORK/base dir/base.raw" "$n" || rc=1
	_expect 2 "neither a regular file nor a block device" open -r "$WORK/d" "$n" || rc=1
	_expect 5 "backing file .*nothere.qcow2 not found" open -r "$WORK/missing.qcow2" "$n" || rc=1
	_expect 2 "loop in the backing chain" open -r "$WORK/loopa.qcow2" "$n" || rc=1
	_expect 2 "loop in the backing chain" open -r "$WORK/self.qcow2" "$n" || rc=1
	_expect 2 "unsupported qcow2 feature" open -r "$WORK/unknown.qcow2" "$n" || rc=1
	_expect 2 "encrypted" open -r "$WORK/enc.qcow2" "$n" || rc=1
	_expect 2 "external data file" open -r "$WORK/ext.qcow2" "$n" || rc=1
	_expect 2 "no backing format.*qemu-img rebase -u -F" open -r "$WORK/nofmt.qcow2" "$n" || rc=1
	_expect 2 "longer than 1023" open -r "$WORK/long1024/c0000.qcow2" "$n" || rc=1
	# a refusal only the kernel finds: 512-byte clusters on a device with
	# 4 KiB logical blocks
	truncate -s %4096 "$WORK/small.qcow2"
	l=$(losetup -f --show -r -b 4096 "$WORK/small.qcow2") || { _diag "losetup -b 4096 failed"; rc=1; }
	if [ -n "$l" ]; then
		_expect 3 "kernel refused the table" open -r "$l" "$n" || rc=1
		losetup -d "$l"
	fi
	_expect 0 "" open -r --dry-run "$WORK/long1023/c0000.qcow2" "$n" || rc=1
	[ "$(grep -o ' backing qcow2 ' <<<"$OUT" | wc -l)" = 1023 ] ||
		{ _diag "dry run of 1023 backing files: $(grep -o ' backing qcow2 ' <<<"$OUT" | wc -l) backing layers"; rc=1; }
	[ ! -e "/dev/mapper/$n" ] || { _diag "/dev/mapper/$n exists after a dry run"; rc=1; }
	_nothing_left || rc=1
	return $rc
}

# The loaded target's version, e.g. "1.1.0".
_target_version()
{
	dmsetup targets | awk '$1 == "qcow2" { sub(/^v/, "", $2); print $2 }'
}

t_readwrite()
{
	local rc=0 n=${P}w img=$WORK/rw.qcow2 orig grown now out w
	orig=$(stat -c %s "$img")
	_diag "qcow2 target version $(_target_version)"
	_expect 1 "snapshots are mapped read-only" open --snapshot 1 "$WORK/snap.qcow2" "$n" || rc=1
	_expect 2 "version 3" open --lazy-refcounts "$WORK/v2.qcow2" "$n" || rc=1
	case $(_target_version) in
	1.0.*)
		# A read-only target: a clear message, nothing left, the file
		# as it was, the write lock released.
		_expect 3 "cannot write; use --read-only" open "$img" "$n" || rc=1
		_nothing_left || rc=1
		[ "$(stat -c %s "$img")" = "$orig" ] || { _diag "size of $img changed"; rc=1; }
		qemu-io -f qcow2 -c 'write -P 1 0 512' "$img" >/dev/null 2>&1 ||
			{ _diag "$img still locked after the failed open"; rc=1; }
		return $rc
		;;
	esac

	_expect 0 "" open "$img" "$n" || return 1
	grown=$(stat -c %s "$img")
	[ "$grown" -gt $((orig + 24 * 1048576)) ] ||
		{ _diag "$img not extended for writing: $orig -> $grown bytes"; rc=1; }
	[ "$(blockdev --getro "/dev/mapper/$n")" = 0 ] || { _diag "device is read-only"; rc=1; }
	_q2s status --json "$n"
	_json 'd["mode"] == "rw" and not d["read_only"] and d["layers"][0]["read_only"] is False' \
		'd["dirty_slices"] is not None and not d["corrupt"] and not d["no_space"]' \
		'd["cache_size_default"] and d["cache"]["slices"] == (8 << 20) // os.sysconf("SC_PAGESIZE")' \
		'd["cache_size"] == d["cache"]["slices"] * os.sysconf("SC_PAGESIZE")' || rc=1
	# while mapped read-write: QEMU may not even read it consistently, and
	# no second mapping of any kind
	out=$(qemu-img info "$img" 2>&1) && { _diag "qemu-img info worked on a read-write mapped image"; rc=1; }
	grep -q 'lock' <<<"$out" || { _diag "qemu-img info: $out"; rc=1; }
	qemu-img info -U "$img" >/dev/null 2>&1 || { _diag "qemu-img info -U failed"; rc=1; }
	_expect 4 "already mapped by $n" open -r "$img" "${n}2" || rc=1
	_expect 4 "already mapped by $n" open "$img" "${n}2" || rc=1
	# write through the device; the same writes on a raw copy are the oracle
	cp "$WORK/plain.raw" "$WORK/rw.ref"
	for w in "0x66 5242880 1048576" "0x67 12345 7000" "0x68 25100000 65824"; do
		# shellcheck disable=SC2086
		set -- $w
		python3 -c 'import sys; sys.stdout.buffer.write(bytes([int(sys.argv[1], 16)]) * int(sys.argv[2]))' "$1" "$3" >"$WORK/w.bin"
		dd if="$WORK/w.bin" of="/dev/mapper/$n" bs=64k oflag=seek_bytes seek="$2" \
			conv=notrunc,fsync status=none || { _diag "write to /dev/mapper/$n failed"; rc=1; }
		dd if="$WORK/w.bin" of="$WORK/rw.ref" bs=64k oflag=seek_bytes seek="$2" conv=notrunc status=none
	done
	blockdev --flushbufs "/dev/mapper/$n"
	_cmp_ref "$n" "$WORK/rw.ref" || rc=1
	_expect 0 "" close "$n" || rc=1
	now=$(stat -c %s "$img")
	[ "$now" -ge "$orig" ] && [ "$now" -lt "$grown" ] ||
		{ _diag "$img: $orig bytes before, $grown mapped, $now after close"; rc=1; }
	out=$(qemu-img check "$img" 2>&1) || { _diag "qemu-img check after close:" "$out"; rc=1; }
	out=$(qemu-img compare -f qcow2 -F raw "$img" "$WORK/rw.ref" 2>&1) ||
		{ _diag "qemu-img compare: $out"; rc=1; }
	_nothing_left || rc=1

	# lazy refcounts: in the table, and clean after close
	_expect 0 "" open --lazy-refcounts "$img" "$n" || return 1
	dmsetup table "$n" | grep -q ' lazy_refcounts$' || { _diag "table: $(dmsetup table "$n")"; rc=1; }
	_q2s status --json "$n"
	_json 'd["lazy_refcounts"] is True' || rc=1
	dd if=/dev/urandom of="/dev/mapper/$n" bs=64k count=16 seek=100 oflag=direct status=none ||
		{ _diag "write failed"; rc=1; }
	_expect 0 "" close "$n" || rc=1
	out=$(qemu-img check "$img" 2>&1) || { _diag "qemu-img check after lazy close:" "$out"; rc=1; }
	_q2s info --json "$img"
	_json 'd["layers"][0]["features"]["dirty"] is False' || rc=1
	_nothing_left || rc=1
	return $rc
}

# _stats_lines: every line of $OUT (stats) is "name value".
_stats_lines()
{
	local line re='^[a-z_]+ [0-9]+$' bad=0
	[ -n "$OUT" ] || { _diag "stats printed nothing"; return 1; }
	while IFS= read -r line; do
		[[ $line =~ $re ]] || { _diag "stats line is not 'name value': '$line'"; bad=1; }
	done <<<"$OUT"
	return "$bad"
}

# _stat NAME: the value of counter NAME in $OUT (stats), empty without it.
_stat()
{
	awk -v n="$1" '$1 == n { print $2 }' <<<"$OUT"
}

t_stats_commit()
{
	local rc=0 n=${P}m img=$WORK/stats.qcow2 before after out
	_expect 1 "needs NAME" stats || rc=1
	_expect 1 "needs NAME" commit || rc=1
	_expect 1 "needs NAME" commit "$n" extra || rc=1
	_expect 1 "does not apply" commit --json "$n" || rc=1
	_expect 1 "does not apply" stats --force "$n" || rc=1
	_expect 5 "no device" stats "${P}none" || rc=1
	_expect 5 "no device" commit "${P}none" || rc=1
	dmsetup create "${P}mz" --table "0 8 zero" || { _diag "dmsetup create failed"; return 1; }
	_expect 3 "not a qcow2 device" stats "${P}mz" || rc=1
	_expect 3 "not a qcow2 device" commit "${P}mz" || rc=1
	dmsetup remove "${P}mz" || rc=1
	cp "$WORK/plain.qcow2" "$img" || return 1
	case $(_target_version) in
	1.0.* | 1.1.*)
		# No messages before 1.2: refused, with the target's version.
		_expect 0 "" open -r "$img" "$n" || return 1
		_expect 3 "may not support it" stats "$n" || rc=1
		_expect 3 "may not support it" commit "$n" || rc=1
		_expect 0 "" close "$n" || rc=1
		_nothing_left || rc=1
		return "$rc"
		;;
	esac

	_expect 0 "" open "$img" "$n" || return 1
	_expect 0 "" stats "$n" || rc=1
	_stats_lines || rc=1
	before=$(_stat commits)
	[ -n "$before" ] || { _diag "stats has no counter commits:" "$OUT"; rc=1; before=0; }
	# a new cluster: dirty metadata for commit to write back
	dd if=/dev/urandom of="/dev/mapper/$n" bs=64k count=1 seek=200 oflag=direct status=none ||
		{ _diag "write to /dev/mapper/$n failed"; rc=1; }
	_expect 0 "" commit "$n" || rc=1
	[ -z "$OUT" ] || { _diag "commit printed:" "$OUT"; rc=1; }
	_expect 0 "" stats "$n" || rc=1
	_stats_lines || rc=1
	after=$(_stat commits)
	[ "${after:-0}" -gt "$before" ] || { _diag "commits: $before before, ${after:-none} after commit"; rc=1; }
	_expect 0 "" stats --json "$n" || rc=1
	_json "d['name'] == '$n' and d['stats']['commits'] >= ${after:-1}" \
		'len(d["stats"]) >= 1 and all(type(v) is int and v >= 0 for v in d["stats"].values())' || rc=1
	_expect 0 "" close "$n" || rc=1
	out=$(qemu-img check "$img" 2>&1) || { _diag "qemu-img check after close:" "$out"; rc=1; }
	_nothing_left || rc=1

	# lazy refcounts: commit clears the dirty bit, the image is consistent
	# while it stays mapped
	_expect 0 "" open --lazy-refcounts "$img" "$n" || return 1
	dd if=/dev/urandom of="/dev/mapper/$n" bs=64k count=4 seek=240 oflag=direct status=none ||
		{ _diag "write to /dev/mapper/$n failed"; rc=1; }
	_expect 0 "" commit "$n" || rc=1
	_q2s info --json "$img"
	_json 'd["layers"][0]["features"]["dirty"] is False' || rc=1
	# 3: leaked clusters only (no corruption)
	out=$(qemu-img check -U "$img" 2>&1)
	case $? in
	0) ;;
	3) _diag "qemu-img check -U while mapped: leaks only:" "$out" ;;
	*) _diag "qemu-img check -U while mapped after commit:" "$out"; rc=1 ;;
	esac
	_expect 0 "" close "$n" || rc=1
	_nothing_left || rc=1
	return "$rc"
}

# _locked FILE BYTE: some open file description holds a lock covering BYTE
# of FILE (/proc/locks merges adjacent ranges: "100 101").
_locked()
{
	local ino
	ino=$(stat -c %i "$1")
	awk -v ino=":$ino" -v b="$2" '
		{ for (i = 1; i <= NF; i++) if (substr($i, length($i) - length(ino) + 1) == ino) break }
		i < NF && $(i + 1) <= b && ($(i + 2) == "EOF" || b <= $(i + 2)) { found = 1 }
		END { exit !found }' /proc/locks
}

_wait_lock()
{
	local _
	for _ in $(seq 100); do
		_locked "$1" 101 && return 0
		sleep 0.1
	done
	_diag "qemu-io never took the write lock of $1:" "$(cat /proc/locks)"
	return 1
}

t_locks()
{
	local rc=0 n=${P}k pid ino out b
	# qemu-io holds the image open for writing: open refuses
	qemu-io -f qcow2 -c 'sleep 300000' "$WORK/lock.qcow2" >/dev/null 2>&1 &
	pid=$!
	BG_PIDS+=("$pid")
	_wait_lock "$WORK/lock.qcow2" || rc=1
	_expect 4 "in use" open -r "$WORK/lock.qcow2" "$n" || rc=1
	_nothing_left || rc=1
	kill "$pid"
	wait "$pid" 2>/dev/null

	# mapped: qemu-img info works, qemu-io cannot write (image and backing
	# file of a chain), after the tool has exited
	_expect 0 "" open -r "$WORK/lock.qcow2" "$n" || return 1
	ino=$(stat -c %i "$WORK/lock.qcow2")
	for b in 100 201 203; do
		_locked "$WORK/lock.qcow2" $b ||
			{ _diag "no lock on byte $b:" "$(grep ":$ino " /proc/locks)"; rc=1; }
	done
	_locked "$WORK/lock.qcow2" 101 && { _diag "a read-only mapping holds the write permission byte"; rc=1; }
	qemu-img info "$WORK/lock.qcow2" >/dev/null 2>&1 || { _diag "qemu-img info failed while mapped"; rc=1; }
	out=$(qemu-io -f qcow2 -c 'write 0 512' "$WORK/lock.qcow2" 2>&1) &&
		{ _diag "qemu-io could write the mapped image"; rc=1; }
	grep -q 'Failed to get "write" lock' <<<"$out" || { _diag "qemu-io: $out"; rc=1; }
	_expect 0 "" open -r "$WORK/top image.qcow2" "${n}2" || rc=1
	out=$(qemu-io -f raw -c 'write 0 512' "$WORK/base dir/base.raw" 2>&1) &&
		{ _diag "qemu-io could write the backing file of a mapped chain"; rc=1; }
	grep -q 'lock' <<<"$out" || { _diag "qemu-io on the backing file: $out"; rc=1; }
	_expect 0 "" close "${n}2" || rc=1
	_expect 0 "" close "$n" || rc=1
	grep -q ":$ino " /proc/locks && { _diag "locks left after close:" "$(grep ":$ino " /proc/locks)"; rc=1; }
	qemu-io -f qcow2 -c 'write -P 7 0 512' "$WORK/lock.qcow2" >/dev/null 2>&1 ||
		{ _diag "qemu-io cannot write after close"; rc=1; }
	_nothing_left || rc=1
	return $rc
}

t_blockdev()
{
	local rc=0 n=${P}b l d
	l=$(losetup -f --show -r "$WORK/plain.qcow2") || { _diag "losetup failed"; return 1; }
	MANUAL_LOOPS+=("$l")
	KEEP_LOOPS=${l#/dev/}
	_expect 0 "" open -r "$l" "$n" || { KEEP_LOOPS=""; return 1; }
	dmsetup table "$n" | grep -q "^0 49152 qcow2 $(cat /sys/block/${l#/dev/}/dev)\$" ||
		{ _diag "table: $(dmsetup table "$n")"; rc=1; }
	[ "$(_our_loops)" = "${l#/dev/}" ] || { _diag "loops: $(_our_loops)"; rc=1; }
	_cmp_ref "$n" "$WORK/plain.raw" || rc=1
	# two read-only mappings of one image: fine; a writable one: refused
	_expect 0 "" open -r "$l" "${n}2" || rc=1
	_cmp_ref "${n}2" "$WORK/plain.raw" || rc=1
	_expect 4 "already mapped by $n" open "$l" "${n}3" || rc=1
	_expect 4 "already mapped" open "$WORK/plain.qcow2" "${n}3" || rc=1
	_expect 0 "" open -r "$WORK/plain.qcow2" "${n}3" || rc=1
	_cmp_ref "${n}3" "$WORK/plain.raw" || rc=1
	for d in "$n" "${n}2" "${n}3"; do
		_expect 0 "" close "$d" || rc=1
	done
	losetup -d "$l"
	MANUAL_LOOPS=()
	KEEP_LOOPS=""
	_nothing_left || rc=1
	return $rc
}

t_partial_sector()
{
	local rc=0 n=${P}z sz
	sz=$(stat -c %s "$WORK/comp.qcow2")
	[ $((sz % 512)) != 0 ] || { _diag "comp.qcow2 is $sz bytes: no partial sector to test"; return 1; }
	_expect 0 "past its last full 512-byte sector" open -r "$WORK/comp.qcow2" "$n" || rc=1
	[ "$(stat -c %s "$WORK/comp.qcow2")" = "$sz" ] || { _diag "read-only image was modified"; rc=1; }
	_expect 0 "" close "$n" || rc=1
	truncate -s %512 "$WORK/comp.qcow2"
	_expect 0 "" open -r "$WORK/comp.qcow2" "$n" || return 1
	[ -z "$ERR" ] || { _diag "unexpected warning: $ERR"; rc=1; }
	_cmp_ref "$n" "$WORK/comp.raw" || rc=1
	_expect 0 "" close "$n" || rc=1
	_nothing_left || rc=1
	return $rc
}

t_close()
{
	local rc=0 n=${P}q fd
	_expect 5 "no device" close "${P}none" || rc=1
	dmsetup create "${P}zero" --table "0 8 zero" || { _diag "dmsetup create failed"; return 1; }
	_expect 1 "not created by qcow2setup.*--force" close "${P}zero" || rc=1
	dmsetup info "${P}zero" >/dev/null 2>&1 || { _diag "${P}zero was removed"; rc=1; }
	_expect 0 "" close --force "${P}zero" || rc=1
	dmsetup info "${P}zero" >/dev/null 2>&1 && { _diag "${P}zero still exists"; rc=1; }
	# an open device is not removed
	_expect 0 "" open -r "$WORK/plain.qcow2" "$n" || return 1
	exec {fd}</dev/mapper/$n
	_expect 4 "in use" close "$n" || rc=1
	[ -b "/dev/mapper/$n" ] || { _diag "open device was removed"; rc=1; }
	exec {fd}<&-
	_expect 0 "" close "$n" || rc=1
	_nothing_left || rc=1
	return $rc
}

t_no_udev_wait_dry_run()
{
	local rc=0 n=${P}n
	_expect 0 "" open -r --no-udev-wait "$WORK/plain.qcow2" "$n" || return 1
	_cmp_ref "$n" "$WORK/plain.raw" || rc=1
	_expect 0 "" close --no-udev-wait "$n" || rc=1
	_expect 0 "" open --dry-run -r --snapshot first --cache-size 64K "$WORK/snap.qcow2" "$n" || rc=1
	[ "$OUT" = "0 16384 qcow2 $WORK/snap.qcow2 4 snapshot 1 cache_size 65536" ] ||
		{ _diag "dry run: $OUT"; rc=1; }
	_expect 0 "" open --dry-run -r "$WORK/top image.qcow2" "$n" || rc=1
	[ "$OUT" = "0 40960 qcow2 $WORK/top image.qcow2 6 backing qcow2 $WORK/d/mid.qcow2 backing raw $WORK/d/../base dir/base.raw" ] ||
		{ _diag "dry run: $OUT"; rc=1; }
	_nothing_left || rc=1
	return $rc
}

t_direct_io()
{
	local rc=0 n=${P}d disk
	disk=$(_disk 1) || return 1
	mkdir -p "$WORK/mnt"
	if ! mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1 "$disk" >/dev/null 2>&1 ||
	   ! mount "$disk" "$WORK/mnt"; then
		_diag "cannot make and mount ext4 on $disk"
		return 1
	fi
	MNT=$WORK/mnt MNT_DISK=$disk
	cp "$WORK/plain.qcow2" "$MNT/" || rc=1
	_expect 0 "" open -r "$MNT/plain.qcow2" "$n" || rc=1
	_q2s status --json "$n"
	_json 'd["layers"][0]["direct_io"] is True' || rc=1
	_cmp_ref "$n" "$WORK/plain.raw" || rc=1
	_expect 0 "" close "$n" || rc=1
	_nothing_left || rc=1
	umount "$MNT" && wipefs -q -a "$disk" >/dev/null 2>&1
	MNT=""
	return $rc
}

# ---------------------------------------------------------------------------

export WORK
T0=$(date +%s)
TESTS="t_usage t_plain t_chain t_snapshots t_info t_status_list t_errors t_readwrite t_stats_commit t_locks t_blockdev t_partial_sector t_close t_no_udev_wait_dry_run t_direct_io"
ktap_header
ktap_plan $(($(wc -w <<<"$TESTS") + 1))

_gen_images >"$WORK/gen.log" 2>&1
GEN=$?
[ $GEN = 0 ] || _diag "image generation failed:" "$(tail -20 "$WORK/gen.log")"
_diag "test images: $(($(date +%s) - T0)) s"
ktap_result $GEN "qcow2setup: test images"

subtest_skip()
{
	# shellcheck disable=SC2086 # $TESTS is a list of names
	if ! _shard_mine "$(_pos_of "$1" $TESTS)"; then
		echo "case shard $QCOW2_SHARD: runs in another VM"
	elif [ "$GEN" != 0 ]; then
		echo "no test images"
	elif [ "$1" = t_direct_io ] &&
	     { ! _disk 1 >/dev/null 2>&1 || ! command -v mkfs.ext4 >/dev/null; }; then
		echo "no spare disk (QCOW2_DISKS) for ext4"
	else
		return 1
	fi
}

# Do not let a failure cascade into the next subtests.
subtest_done()
{
	if [ "$2" != 0 ]; then
		_q2s_cleanup
		BG_PIDS=() MANUAL_LOOPS=() MNT="" KEEP_LOOPS=""
	fi
}

# shellcheck disable=SC2086
ktap_run_subtests qcow2setup $TESTS
_diag "total $(($(date +%s) - T0)) s"
ktap_finish
