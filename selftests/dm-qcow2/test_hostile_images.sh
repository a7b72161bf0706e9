#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_hostile_images.sh - a generated corpus of damaged and malicious qcow2
# images must never crash the kernel, hang, or make the target write outside
# the image or over the image's own metadata.
#
# test_read_corrupt.sh checks one documented validation rule per image (the
# reason the table is refused, the exact reads that fail);
# tools/testing/fuzz/ fuzzes the parser in userspace.  This test is the
# in-kernel counterpart of the fuzzers: many images, each also mapped
# read-write and written, with checks that hold whatever the damage.
#
# Seed images are made here with qemu-img/qemu-io (64 KiB and 4 KiB
# clusters, v2, compressed, with an internal snapshot; 8-16 MiB virtual).
# qcow2_hostile.py derives the corpus from them (nothing binary is kept):
#   - crafted cases: header fields (size, l1_size, table offsets over the
#     header or each other, refcount_order and cluster_bits that lie, a
#     backing name inside the header fields, snapshot tables over metadata);
#     overlapping tables (an L2 table that is the L1, refcount table or a
#     refcount block; two L1 entries sharing an L2 table); L2 entries into
#     the header, L1, refcount table, a refcount block or their own L2
#     table, with and without COPIED, past the end or in the growth area;
#     refcounts that lie (0 for used data/L2/L1/refcount table/header/
#     refcount block, 0xffff, 1 for clusters a snapshot shares, refcount
#     table entries into the L1/header/an L2 table/past the end/misaligned);
#     snapshot tables out of range (mapped with "snapshot 1"); compressed
#     descriptors past the end of the device or over the header/L1/refcount
#     table;
#   - a seeded random group: 1-4 bit flips, byte changes or whole entries
#     pointing at other metadata clusters, in the header, L1, refcount table,
#     refcount blocks and L2 tables of the seeds ($QCOW2_SEED, default 1;
#     $QCOW2_HOSTILE_RANDOM images, default 100).
#
# Every image is written to the spare disk (QCOW2_DISKS) between two 1 MiB
# guard regions of a fixed pattern, with 2 MiB of zeros after it for
# allocations, and a dm-linear device of exactly that region is the image
# device.  Then:
#   1. the image is mapped read-only and read whole with 64 KiB direct reads
#      (EIO is allowed); a refused table must leave dm core's "device-mapper:
#      table: ...: qcow2: <reason>" line; the region must be unchanged;
#   2. if it mapped, it is mapped read-write: writes (in place, partial,
#      allocating, whole clusters), discards, write-zeroes, flushes, a full
#      read, removal (which writes the metadata back).
# One subtest per image fails on: a kernel report in the log since the image
# started (oops, WARN, KASAN, ...; run-vm.sh fails the whole run too), a
# phase not finishing within 120 s (then the rest is not run), a refusal
# without a reason line, I/O errors with no "qcow2" line in the log (unless
# dm's shared rate limit, 10 lines per 5 s, may have swallowed it), a guard
# changed, the image changed without a read-write mapping, the header
# cluster changed outside the fields the target updates (refcount table
# offset/clusters, dirty and corrupt bits), a cluster written that the
# original image neither referenced nor had free, guest data (every written
# sector carries a signature) found in a metadata cluster of the original
# image, or an L1/refcount table cluster zeroed.  The last line is
# "# summary: images N refused N mapped N ...".
#
# A metadata cluster of the original image may hold guest data in the end
# only if the final image no longer uses it as metadata (an L2 table copied
# because its L1 entry lacked the copied flag, then freed and reused).
# Bugs it found, all fixed: refcount table entry 0 = 0 made the first
# allocation zero the header and loop forever; on v2 images the corrupt bit
# was written at offset 72, over the first header extension; guest data was
# written over L2 tables, refcount blocks and snapshot tables that L2
# entries pointed at.
# QCOW2_HOSTILE_VERBOSE=1 prints the diagnostics of every image.
#
# GEN_ONLY=1 only builds the corpus (no root, no module) and checks that
# every case changed its seed (~3 s on the development host).
#
# Measured in the TCG test VM, 170 images, with two other TCG VMs running on
# the 2-CPU host: ~550 s (about 3 s per image, 18 s for the seeds).

. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/qcow2_common.sh"

# shellcheck disable=SC2119	# no extra required commands
_qcow2_init
if ! _gen_only; then
	DISK=$(_disk 1) || exit
	_require_dm_target linear
fi

SEED=${QCOW2_SEED:-1}
NRANDOM=${QCOW2_HOSTILE_RANDOM:-100}
SEEDS=$WORK/seeds
mkdir -p "$SEEDS"

# _make_seeds: the undamaged images every case starts from.
_make_seeds()
{
	local w=("write -q -P 0x11 0 256k" "write -q -P 0x22 1M 64k" "write -q -P 0x33 8M 512k"
		"write -q -P 0x44 $((16 * 1048576 - 65536)) 64k" "write -q -P 0x55 2M 8k"
		"write -q -P 0x66 6M 8k")

	_mkimg "$SEEDS/s64.qcow2" 16M && _qio "$SEEDS/s64.qcow2" "${w[@]}" || return 1
	_mkimg "$SEEDS/s4k.qcow2" 8M cluster_size=4k &&
		_qio "$SEEDS/s4k.qcow2" "write -q -P 0x11 0 64k" "write -q -P 0x22 2M 16k" \
			"write -q -P 0x33 6M 8k" "write -q -P 0x44 $((8 * 1048576 - 4096)) 4k" ||
		return 1
	_mkimg "$SEEDS/sv2.qcow2" 16M compat=0.10 && _qio "$SEEDS/sv2.qcow2" "${w[@]}" || return 1
	truncate -s 16M "$WORK/comp.raw" && QIO_FMT=raw _qio "$WORK/comp.raw" "${w[@]}" &&
		qemu-img convert -c -O qcow2 "$WORK/comp.raw" "$SEEDS/scomp.qcow2" || return 1
	rm -f "$WORK/comp.raw"
	cp "$SEEDS/s64.qcow2" "$SEEDS/ssnap.qcow2" && qemu-img snapshot -c s1 "$SEEDS/ssnap.qcow2" &&
		_qio "$SEEDS/ssnap.qcow2" "write -q -P 0x77 0 64k" "write -q -P 0x78 12M 64k" || return 1
	_expect_stats "$SEEDS/scomp.qcow2" compressed=4
}

t0=${EPOCHREALTIME//[.,]/}
if ! _make_seeds; then
	echo "# building the seed images failed"
	exit 1
fi
_qdiag "seed images in $(_elapsed "$t0") s; corpus seed $SEED, $NRANDOM random images"

ktap_header
if _gen_only; then
	python3 "$QCOW2_TEST_DIR/qcow2_hostile.py" gen "$SEEDS" "$WORK/corpus" "$SEED" "$NRANDOM"
	rc=$?
else
	HOSTILE_REPORT_RE=$_KERNEL_REPORT_RE \
		python3 "$QCOW2_TEST_DIR/qcow2_hostile.py" run "$SEEDS" "$WORK/corpus" "$SEED" \
		"$NRANDOM" "$DISK"
	rc=$?
fi
_qdiag "total $(_elapsed) s"
[ $rc -eq 0 ] && exit "$KSFT_PASS"
exit "$KSFT_FAIL"
