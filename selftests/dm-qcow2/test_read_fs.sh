#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_read_fs.sh - a real filesystem read through the target.
#
# A seeded generator makes ~300 files (empty, tiny, odd-sized, up to 2 MiB;
# random, text-like and mostly-zero content) in nested directories and
# records their sha256sums.  `mkfs.ext4 -d` builds a raw filesystem fs1
# with half of the files (no mount needed); fs2 is a copy of fs1 to which
# `debugfs -w` adds the other half (so most blocks of fs1 stay where they
# are, and fs2 passes e2fsck -fn).  fs2 is converted to qcow2 plain (64 KiB),
# deflate-compressed (64 KiB), zstd-compressed (4 KiB clusters) and, as a
# two-layer chain, overlay.qcow2 over base.qcow2 (= fs1): the overlay is
# created empty with base.qcow2 as backing file and only the 4 KiB blocks
# where fs2 differs from fs1 are written into it with qemu-io (`write -s`
# from chunk files), so most of the filesystem is read through the backing
# layer.  (`qemu-img convert -B` does not do this: with a raw source it
# copies everything.)  Each is mapped
# read-only, mounted `-o ro,noload` and every file's sha256sum is checked;
# the file count must match too.
#
# GEN_ONLY=1 validates on the host without mounting: `qemu-img compare` of
# each image (chain) with fs2.raw, debugfs rdump of the converted reference
# must pass the sha256sum list, and the overlay must really read data from
# its base (qemu-img map shows depth-1 data).
#
# Measured on the development host (2 vCPU, idle): file tree + mkfs +
# debugfs ~0.7 s, the five images ~1.1 s; GEN_ONLY=1 run ~3 s.  In the TCG
# test VM: ~65 s.

. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/qcow2_common.sh"

_qcow2_init mkfs.ext4 sha256sum debugfs e2fsck
if ! _gen_only; then
	_require_cmd mount umount
	grep -qw ext4 /proc/filesystems || modprobe ext4 2>/dev/null
	grep -qw ext4 /proc/filesystems || { echo "1..0 # SKIP no ext4 in the kernel"; exit 4; }
fi

FS_SIZE=64M
TREE=$WORK/tree
t0=${EPOCHREALTIME//[.,]/}

# tree/all/... (every file), and the list of the first half
python3 - "$TREE" <<'EOF'
import os, random, sys
root = sys.argv[1]
r = random.Random(20240601)
words = b"alpha beta gamma delta qcow2 cluster device mapper kernel read path ".split()
sizes = [0, 1, 2, 511, 512, 513, 4095, 4096, 4097, 65535, 65536, 65537]
files = []
for i in range(300):
    d = "d%02d/s%d" % (r.randrange(12), r.randrange(3))
    if i < len(sizes):
        size = sizes[i]
    elif i % 40 == 0:
        size = r.randrange(512 << 10, 2 << 20)
    else:
        size = int(r.expovariate(1 / 24000))
    kind = i % 3
    if kind == 0:
        data = r.randbytes(size)
    elif kind == 1:
        data = (b" ".join(r.choice(words) for _ in range(size // 4 + 1)))[:size]
    else:
        data = bytearray(size)
        for _ in range(size // 4096 + 1):
            if size:
                data[r.randrange(size)] = r.randrange(256)
        data = bytes(data)
    files.append(("%s/f%03d.bin" % (d, i), data))
for half, sel in (("half", files[:150]), ("rest", files[150:]), ("all", files)):
    for name, data in sel:
        p = os.path.join(root, half, name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
EOF
(cd "$TREE/all" && find . -type f | sort | xargs sha256sum) >"$WORK/sums" ||
	{ echo "# cannot build the file tree"; exit 1; }
NFILES=$(wc -l <"$WORK/sums")

_mkfs()
{
	local dir=$1 out=$2
	rm -f "$out"
	truncate -s $FS_SIZE "$out"
	E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -b 4096 -L qc2fs \
		-U 6b1b2a4e-5c1d-4d8e-9c3e-0123456789ab -E hash_seed=1c2d3e4f-0000-4000-8000-000000000001,root_owner=0:0 \
		-d "$dir" "$out"
}
# debugfs commands adding tree/rest to a copy of fs1
_debugfs_cmds()
{
	local f d
	(cd "$TREE/rest" && find . -type d | sort | sed 's|^\./*||') | while read -r d; do
		[ -n "$d" ] && echo "mkdir /$d"
	done
	(cd "$TREE/rest" && find . -type f | sort | sed 's|^\./||') | while read -r f; do
		echo "write $TREE/rest/$f /$f"
	done
}
_mkfs "$TREE/half" "$WORK/fs1.raw" || { echo "# mkfs.ext4 -d failed"; exit 1; }
cp --sparse=always "$WORK/fs1.raw" "$WORK/fs2.raw"
_debugfs_cmds >"$WORK/debugfs.cmds"
E2FSPROGS_FAKE_TIME=1700000000 debugfs -w -f "$WORK/debugfs.cmds" "$WORK/fs2.raw" >/dev/null 2>&1
if ! e2fsck -fn "$WORK/fs2.raw" >"$WORK/fsck.out" 2>&1; then
	echo "# fs2 (fs1 + debugfs writes) is not clean:"
	sed 's/^/# /' "$WORK/fsck.out" | tail -5
	exit 1
fi
T_FS=$(_elapsed "$t0")

# name:image:specs
t0=${EPOCHREALTIME//[.,]/}
CASES=()
qemu-img convert -O qcow2 "$WORK/fs2.raw" "$WORK/plain.qcow2" &&
	CASES+=("plain 64k:plain.qcow2:")
qemu-img convert -c -O qcow2 "$WORK/fs2.raw" "$WORK/deflate.qcow2" &&
	CASES+=("deflate 64k:deflate.qcow2:")
qemu-img convert -c -O qcow2 -o cluster_size=4k,compression_type=zstd "$WORK/fs2.raw" "$WORK/zstd.qcow2" &&
	CASES+=("zstd 4k:zstd.qcow2:")
# _diff_cmds OLD NEW DIR   qemu-io commands writing NEW's differing blocks
_diff_cmds()
{
	python3 - "$@" <<'EOF'
import sys
old, new, d = sys.argv[1:4]
bs = 4096
with open(old, "rb") as fo, open(new, "rb") as fn:
    off, start, chunks = 0, None, []
    while True:
        a, b = fo.read(bs), fn.read(bs)
        if not b:
            break
        if a != b:
            if start is None:
                start, buf = off, bytearray()
            buf += b
        elif start is not None:
            chunks.append((start, bytes(buf)))
            start = None
        off += len(b)
    if start is not None:
        chunks.append((start, bytes(buf)))
for i, (o, data) in enumerate(chunks):
    p = "%s/chunk%d" % (d, i)
    open(p, "wb").write(data)
    print("write -q -s %s %d %d" % (p, o, len(data)))
EOF
}
mkdir -p "$WORK/chunks"
qemu-img convert -O qcow2 "$WORK/fs1.raw" "$WORK/base.qcow2" &&
	_mkimg "$WORK/overlay.qcow2" $FS_SIZE "backing_file=$WORK/base.qcow2,backing_fmt=qcow2" &&
	_diff_cmds "$WORK/fs1.raw" "$WORK/fs2.raw" "$WORK/chunks" >"$WORK/ov.cmds" &&
	_qio_file "$WORK/overlay.qcow2" "$WORK/ov.cmds" &&
	CASES+=("overlay over base:overlay.qcow2:qcow2:$WORK/base.qcow2")
rm -rf "$WORK/chunks"
T_IMG=$(_elapsed "$t0")
rm -rf "$TREE"

ktap_header
ktap_plan 4
[ ${#CASES[@]} -eq 4 ] || _qdiag "image conversion failed: only ${#CASES[@]} images"

_oracle_case()
{
	local img=$1 rc=0 out=$WORK/rdump
	qemu-img compare -q -f qcow2 -F raw "$img" "$WORK/fs2.raw" ||
		{ _qdiag "qemu-img compare: $img differs from fs2.raw"; rc=1; }
	_ref_raw "$img" "$WORK/ref.raw" || return 1
	rm -rf "$out"
	mkdir -p "$out"
	debugfs -R "rdump / $out" "$WORK/ref.raw" >/dev/null 2>&1
	(cd "$out" && sha256sum -c --quiet "$WORK/sums") >/dev/null 2>&1 ||
		{ _qdiag "files extracted from the reference do not match"; rc=1; }
	[ "$(find "$out" -type f ! -path '*/lost+found/*' | wc -l)" = "$NFILES" ] ||
		{ _qdiag "file count mismatch in the reference"; rc=1; }
	if [ "$(basename "$img")" = overlay.qcow2 ]; then
		qemu-img map -U --output=json "$img" | grep -q '"depth": 1, "present": true, "zero": false, "data": true' ||
			{ _qdiag "overlay reads no data from its base"; rc=1; }
		qemu-img map -U --output=json "$img" | grep -q '"depth": 0, "present": true, "zero": false, "data": true' ||
			{ _qdiag "overlay holds no data of its own"; rc=1; }
	fi
	rm -rf "$out" "$WORK/ref.raw"
	return $rc
}

_map_case()
{
	local img=$1 rc=0 name="${QCOW2_DM_PREFIX}fs$N" mnt=$WORK/mnt n
	shift
	_map_image "$name" "$img" "$@" || return 1
	mkdir -p "$mnt"
	if ! mount -t ext4 -o ro,noload "$MAP_DEV" "$mnt"; then
		_qdiag "mount failed" "$(dmesg | tail -5)"
		_unmap "$name"
		return 1
	fi
	(cd "$mnt" && sha256sum -c --quiet "$WORK/sums") 2>&1 | head -5 >"$WORK/sha.out"
	[ -s "$WORK/sha.out" ] && { _qdiag "sha256sum mismatches:" "$(cat "$WORK/sha.out")"; rc=1; }
	n=$(find "$mnt" -type f ! -path '*/lost+found/*' | wc -l)
	[ "$n" = "$NFILES" ] || { _qdiag "$n files on the filesystem, expected $NFILES"; rc=1; }
	umount "$mnt" || rc=1
	_check_status "$name" "$MAP_VSIZE" "$(_cluster_size "$img")" "$MAP_LAYERS" 0 || rc=1
	_unmap "$name"
	return $rc
}

N=0
for c in "${CASES[@]}"; do
	N=$((N + 1))
	IFS=: read -r desc img spec <<<"$c"
	specs=()
	[ -n "$spec" ] && specs=("$spec")
	if _gen_only; then
		_oracle_case "$WORK/$img"
	else
		_qmark
		_map_case "$WORK/$img" "${specs[@]}"
		r=$?
		_check_dmesg_clean >/dev/null || { _qdiag "dmesg not clean"; r=1; }
		(exit $r)
	fi
	_result "ext4 $desc: $NFILES files" $?
done
while [ $N -lt 4 ]; do
	N=$((N + 1))
	_result "image $N: generation" 1
done
_qdiag "generation: tree + mkfs ${T_FS}s, images ${T_IMG}s; total $(_elapsed)s"
ktap_finish
