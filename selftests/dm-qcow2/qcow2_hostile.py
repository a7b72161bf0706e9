#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""qcow2_hostile.py - damaged and malicious qcow2 images against dm-qcow2.

Driver of test_hostile_images.sh (see there for the contract).  Usage:

  qcow2_hostile.py gen  SEEDDIR OUTDIR SEED NRANDOM
      build the corpus from the seed images SEEDDIR/<seed>.qcow2 into
      OUTDIR/NNN.qcow2 and print one line per image: "NNN seed name".
  qcow2_hostile.py run  SEEDDIR OUTDIR SEED NRANDOM DISK
      build the corpus and run every image through the target (root, in a
      throw-away VM: DISK is overwritten), printing KTAP subtests.

Everything per image runs in this one process (plus dmsetup), because in the
TCG test VMs every exec of python costs about a second.
"""

import errno
import fcntl
import mmap
import os
import random
import re
import select
import shutil
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qcow2_poke  # noqa: E402  (the same directory)
from qcow2_poke import Image, OFLAG_COPIED, OFLAG_COMPRESSED, OFFSET_MASK  # noqa: E402

K = 1024
M = K * K
SIG = b"HOSTILE-GUEST-WR"       # every guest write carries it
GUARD = 1 * M                   # guard regions before and after the image
GROWTH = 2 * M                  # room after the image for allocations
IO_TIMEOUT = 120                # seconds for one phase before "hang"
VERBOSE = os.environ.get("QCOW2_HOSTILE_VERBOSE", "0") == "1"
# Bugs this test found in the target, all fixed: a hang when refcount
# table entry 0 is 0 (a refcount block placed over the header), the corrupt
# bit written into a version 2 header's first extension, guest data written
# over (and frees of) metadata that L2 entries point at.

# Keep in sync with test_common.sh (passed in the environment).
REPORT_RE = re.compile(os.environ.get(
    "HOSTILE_REPORT_RE",
    "Oops|BUG:|WARNING:|possible circular locking|possible recursive locking|"
    "inconsistent lock state|INFO: trying to register non-static key|"
    "suspicious RCU usage|KASAN|UBSAN|kmemleak|blocked for more than|"
    "Kernel panic|general protection fault|Call Trace:"))
CTR_RE = re.compile(r"device-mapper: table: \S+: qcow2: (.*)")

# Seed images (made by test_hostile_images.sh with qemu-img/qemu-io).
SEEDS = ["s64", "s4k", "sv2", "scomp", "ssnap"]


def ru(x, a):
    return (x + a - 1) // a * a


# ---------------------------------------------------------------------------
# Tolerant view of an image's metadata (for generation and for the checks)

class Meta:
    """Clusters an image refers to, read without trusting anything."""

    def __init__(self, path, limit):
        im = Image(path)
        h = im.h
        self.im = im
        self.cb, self.cs = im.cb, im.cs
        self.limit = limit              # bytes: nothing at or past it counts
        self.nlimit = ru(limit, self.cs) >> self.cb
        self.fixed = {0}                # header, L1, refcount/snapshot tables
        self.tables = set()             # L2 tables, refcount blocks
        self.data = set()               # data and compressed clusters
        self.l1 = set()
        self.reftable = set()
        self.l2_list = []               # (cluster, l1 index) of the active L1
        self.refblocks = []
        self.snap_l1 = []
        l1o, l1s = h["l1_table_offset"], h["l1_size"]
        if 0 < l1s <= (1 << 22):
            self.l1 = self._span(l1o, 8 * l1s)
        rto, rtc = h["refcount_table_offset"], h["refcount_table_clusters"]
        if 0 < rtc <= (1 << 16):
            self.reftable = self._span(rto, rtc << self.cb)
        self.fixed |= self.l1 | self.reftable
        try:
            snaps = im.snapshots() if h["nb_snapshots"] <= 64 else []
            if snaps:
                end = snaps[-1][4] + 40
                self.fixed |= self._span(h["snapshots_offset"],
                                         end - h["snapshots_offset"])
            for _sid, _name, so, ss, _ in snaps:
                if 0 < ss <= (1 << 16):
                    self.snap_l1.append((so, ss))
                    self.fixed |= self._span(so, 8 * ss)
        except (struct.error, ValueError, OverflowError):
            pass
        if self.reftable:
            n = min(rtc << (self.cb - 3), self.nlimit)
            for i in range(n):
                e = im.u(rto + 8 * i, 8) & ~511 & ((1 << 63) - 1)
                if e and e < limit:
                    self.tables.add(e >> self.cb)
                    self.refblocks.append((e >> self.cb, i))
        l1s_all = [(l1o, l1s)] + self.snap_l1
        for k, (lo, ls) in enumerate(l1s_all):
            if not 0 < ls <= (1 << 22):
                continue
            for i in range(min(ls, self.nlimit)):
                l2 = im.u(lo + 8 * i, 8) & OFFSET_MASK
                if not l2 or l2 >= limit:
                    continue
                c = l2 >> self.cb
                self.tables.add(c)
                if k == 0:
                    self.l2_list.append((c, i))
                self._l2(l2)

    def _span(self, off, ln):
        if ln <= 0 or off >= self.limit:
            return set()
        end = min(off + ln, self.limit)
        return set(range(off >> self.cb, ((end - 1) >> self.cb) + 1))

    def _l2(self, l2):
        im = self.im
        tab = im.read(l2, self.cs)
        for i in range(self.cs // im.l2_esize):
            e = struct.unpack_from(">Q", tab, i * im.l2_esize)[0]
            if e & OFLAG_COMPRESSED:
                coff, csize = im.compressed_range(e)
                self.data |= self._span(coff, csize)
            else:
                off = e & OFFSET_MASK
                if off and off < self.limit:
                    self.data.add(off >> self.cb)

    def referenced(self):
        return self.fixed | self.tables | self.data

    def refcount(self, c):
        """Refcount of cluster c as the image says it, None if unreadable."""
        im = self.im
        order = im.h["refcount_order"] if im.h["version"] >= 3 else 4
        if order > 6:
            return None
        bits = 1 << order
        per_block = (self.cs * 8) // bits
        i, j = divmod(c, per_block)
        rto = im.h["refcount_table_offset"]
        if i >= (im.h["refcount_table_clusters"] << (self.cb - 3)):
            return None
        rb = im.u(rto + 8 * i, 8) & ~511 & ((1 << 63) - 1)
        if not rb or rb >= self.limit:
            return None
        if bits >= 8:
            b = bits // 8
            return int.from_bytes(im.read(rb + j * b, b), "big")
        byte = im.read(rb + (j * bits) // 8, 1)[0]
        shift = (j * bits) % 8
        return (byte >> shift) & ((1 << bits) - 1)

    def refcount_addr(self, c):
        im = self.im
        bits = 1 << im.h["refcount_order"]
        per_block = (self.cs * 8) // bits
        i, j = divmod(c, per_block)
        rb = im.u(im.h["refcount_table_offset"] + 8 * i, 8) & ~511
        return rb + (j * bits) // 8, bits


# ---------------------------------------------------------------------------
# The corpus

def set_refcount(path, c, value):
    m = Meta(path, 1 << 40)
    addr, bits = m.refcount_addr(c)
    im = Image(path, write=True)
    if bits < 8:
        raise ValueError("sub-byte refcounts")
    im.write(addr, value.to_bytes(bits // 8, "big"))


def hset(path, field, value):
    qcow2_poke.cmd_header_set([path, field, str(value)])


def l1set(path, idx, value):
    qcow2_poke.cmd_l1_set([path, str(idx), str(value)])


def l2set(path, goff, value):
    qcow2_poke.cmd_l2_set([path, str(goff), str(value)])


def meta(path):
    return Meta(path, 1 << 40)


def hdr(path, f):
    return Image(path).h[f]


def first_compressed(path):
    im = Image(path)
    for goff, e, _bm, _n in im.walk():
        if e & OFLAG_COMPRESSED:
            return goff, e
    raise ValueError("no compressed cluster")


def comp_set(path, fn):
    """Rewrite the first compressed L2 entry: new = fn(entry, x) where x is
    the bit position of the sector count field."""
    goff, e = first_compressed(path)
    x = 62 - (Image(path).cb - 8)
    l2set(path, goff, fn(e, x))


def reftable_set(path, idx, value):
    im = Image(path, write=True)
    im.write(im.h["refcount_table_offset"] + 8 * idx, struct.pack(">Q", value))


def snap_set(path, fmt, rel, value):
    """Overwrite a field of the first snapshot table entry."""
    im = Image(path, write=True)
    im.write(im.h["snapshots_offset"] + rel, struct.pack(fmt, value))


def data_cluster(path, goff):
    return Image(path).l2_get(goff)[0] & OFFSET_MASK


C = OFLAG_COPIED


def targeted():
    """(name, seed, action(path), snapshot-mapping) for every crafted case."""
    T = []

    def add(name, seed, fn, snap=False):
        T.append((name, seed, fn, snap))

    l1o = lambda p: hdr(p, "l1_table_offset")           # noqa: E731
    rto = lambda p: hdr(p, "refcount_table_offset")     # noqa: E731
    rb0 = lambda p: Image(p).u(rto(p), 8) & ~511        # noqa: E731
    l2o = lambda p, i=0: Image(p).l1_get(i) & OFFSET_MASK  # noqa: E731

    # --- header fields
    add("hdr: size 0", "s64", lambda p: hset(p, "size", 0))
    add("hdr: size 2^62", "s64", lambda p: hset(p, "size", 1 << 62))
    add("hdr: size not a multiple of 512", "s64", lambda p: hset(p, "size", 16 * M - 100))
    add("hdr: size half the table length", "s64", lambda p: hset(p, "size", 8 * M))
    add("hdr: l1_size 0", "s64", lambda p: hset(p, "l1_size", 0))
    add("hdr: L1 at offset 0 (over the header)", "s64", lambda p: hset(p, "l1_table_offset", 0))
    add("hdr: L1 over the refcount table", "s64",
        lambda p: hset(p, "l1_table_offset", rto(p)))
    add("hdr: refcount table at offset 0 (over the header)", "s64",
        lambda p: hset(p, "refcount_table_offset", 0))
    add("hdr: refcount table over the L1 table", "s64",
        lambda p: hset(p, "refcount_table_offset", l1o(p)))
    add("hdr: refcount table runs past the device", "s64",
        lambda p: hset(p, "refcount_table_clusters", 4000))
    add("hdr: refcount_order 0 over 16-bit refcounts", "s64",
        lambda p: hset(p, "refcount_order", 0))
    add("hdr: refcount_order 6 over 16-bit refcounts", "s64",
        lambda p: hset(p, "refcount_order", 6))
    add("hdr: cluster_bits 15 on a 64k image", "s64", lambda p: hset(p, "cluster_bits", 15))
    add("hdr: cluster_bits 13 on a 4k image", "s4k", lambda p: hset(p, "cluster_bits", 13))
    add("hdr: backing name inside the header fields", "s64",
        lambda p: (hset(p, "backing_file_offset", 48), hset(p, "backing_file_size", 16)))
    add("hdr: snapshot table at offset 0", "s64",
        lambda p: (hset(p, "nb_snapshots", 1), hset(p, "snapshots_offset", 0)), True)
    add("hdr: snapshot table over the L1 table", "ssnap",
        lambda p: hset(p, "snapshots_offset", l1o(p)), True)
    add("hdr: 1000 snapshots running past the end", "ssnap",
        lambda p: hset(p, "nb_snapshots", 1000), True)

    # --- overlapping tables
    add("overlap: L2 table == L1 cluster (COPIED)", "s64", lambda p: l1set(p, 0, C | l1o(p)))
    add("overlap: L2 table == refcount table (COPIED)", "s64", lambda p: l1set(p, 0, C | rto(p)))
    add("overlap: L2 table == refcount block (COPIED)", "s64", lambda p: l1set(p, 0, C | rb0(p)))
    add("overlap: L2 table in the header cluster", "s4k",
        lambda p: l1set(p, 0, C | 0x200))
    add("overlap: unallocated L1[2] shares L1[0]'s L2 table", "s4k",
        lambda p: l1set(p, 2, Image(p).l1_get(0)))
    add("overlap: L1[3] and L1[0] share an L2 table", "s4k",
        lambda p: l1set(p, 3, Image(p).l1_get(0)))
    add("overlap: L2 table == L1 cluster, no COPIED", "s4k",
        lambda p: l1set(p, 0, l1o(p)))

    # --- L2 entries into metadata or past the end
    add("l2: entry into the header cluster", "s64", lambda p: l2set(p, 0, C | 0))
    add("l2: entry into the L1 table (COPIED)", "s64", lambda p: l2set(p, 0, C | l1o(p)))
    add("l2: entry into the refcount table (COPIED)", "s64", lambda p: l2set(p, 64 * K, C | rto(p)))
    add("l2: entry into a refcount block (COPIED)", "s64", lambda p: l2set(p, 128 * K, C | rb0(p)))
    add("l2: entry into its own L2 table (COPIED)", "s64", lambda p: l2set(p, 192 * K, C | l2o(p)))
    add("l2: entry into the L1 table (not COPIED)", "s64", lambda p: l2set(p, 0, l1o(p)))
    add("l2: entry into the refcount table (not COPIED)", "s64", lambda p: l2set(p, 0, rto(p)))
    add("l2: entry into a refcount block (not COPIED)", "s64", lambda p: l2set(p, 64 * K, rb0(p)))
    add("l2: entry into its own L2 table (not COPIED)", "s4k", lambda p: l2set(p, 0, l2o(p)))
    add("l2: entry 1 TiB past the end (COPIED)", "s64", lambda p: l2set(p, 0, C | (1 << 40)))
    add("l2: entry in the growth area (COPIED)", "s64",
        lambda p: l2set(p, 64 * K, C | ru(os.path.getsize(p), 64 * K)))
    add("l2: two entries share a data cluster (COPIED)", "s64",
        lambda p: l2set(p, 64 * K, C | data_cluster(p, 0)))
    add("l2: zero cluster preallocated over the L1 table", "s64",
        lambda p: l2set(p, 4 * M, C | l1o(p) | 1))
    add("l2: zero flag and COPIED with offset 0", "s4k", lambda p: l2set(p, 0, C | 1))
    add("l2: entry with reserved bits (COPIED)", "s64",
        lambda p: l2set(p, 0, C | (0x3f << 56) | data_cluster(p, 0)))
    add("l2: v2 image entry into the L1 table (COPIED)", "sv2", lambda p: l2set(p, 0, C | l1o(p)))

    # --- refcounts that lie
    d0 = lambda p: data_cluster(p, 0) >> 16             # noqa: E731
    add("refcount: 0 for a used data cluster", "s64", lambda p: set_refcount(p, d0(p), 0))
    add("refcount: 0 for an L2 table", "s64", lambda p: set_refcount(p, l2o(p) >> 16, 0))
    add("refcount: 0 for the L1 table", "s64", lambda p: set_refcount(p, l1o(p) >> 16, 0))
    add("refcount: 0 for the refcount table", "s64", lambda p: set_refcount(p, rto(p) >> 16, 0))
    add("refcount: 0 for the header", "s64", lambda p: set_refcount(p, 0, 0))
    add("refcount: 0 for the refcount block itself", "s64",
        lambda p: set_refcount(p, rb0(p) >> 16, 0))
    add("refcount: 0xffff for a used data cluster", "s64", lambda p: set_refcount(p, d0(p), 0xffff))
    add("refcount: first refcount block all zero", "s64",
        lambda p: Image(p, write=True).write(rb0(p), bytes(64 * K)))
    add("refcount: 1 for clusters a snapshot shares", "ssnap",
        lambda p: [set_refcount(p, c, 1) for c in Meta(p, 1 << 40).data])
    add("reftable: entry 0 points into the L1 table", "s64", lambda p: reftable_set(p, 0, l1o(p)))
    add("reftable: entry 0 points at the header", "s64", lambda p: reftable_set(p, 0, 0x200))
    add("reftable: entry 0 is 0 (no refcount block)", "s64", lambda p: reftable_set(p, 0, 0))
    add("reftable: entry 0 past the end", "s64", lambda p: reftable_set(p, 0, 1 << 40))
    add("reftable: entry 0 misaligned", "s64", lambda p: reftable_set(p, 0, rb0(p) + 512))
    add("reftable: entry 0 points at an L2 table", "s64", lambda p: reftable_set(p, 0, l2o(p)))
    add("reftable: entry 1 duplicates entry 0", "s4k",
        lambda p: reftable_set(p, 1, rb0(p)))

    # --- snapshot tables (mapped with "snapshot 1" read-only)
    add("snapshot: L1 table past the end", "ssnap", lambda p: snap_set(p, ">Q", 0, 1 << 40), True)
    add("snapshot: l1_size huge", "ssnap", lambda p: snap_set(p, ">I", 8, 0x3fffffff), True)
    add("snapshot: L1 table == the active L1", "ssnap",
        lambda p: snap_set(p, ">Q", 0, l1o(p)), True)
    add("snapshot: L1 table == the refcount table", "ssnap",
        lambda p: snap_set(p, ">Q", 0, rto(p)), True)
    add("snapshot: extra_data_size huge", "ssnap",
        lambda p: snap_set(p, ">I", 36, 0xfffffff0), True)
    add("snapshot: id and name lengths huge", "ssnap",
        lambda p: snap_set(p, ">I", 12, 0xffffffff), True)
    add("snapshot: table misaligned inside the header cluster", "ssnap",
        lambda p: hset(p, "snapshots_offset", 8), True)

    # --- compressed descriptors
    add("compressed: offset past the device", "scomp",
        lambda p: comp_set(p, lambda e, x: (e & ~((1 << x) - 1)) | (1 << 40)))
    add("compressed: last sectors straddle the end", "scomp",
        lambda p: comp_set(p, lambda e, x: (e & ~((1 << 62) - 1)) | (255 << x) |
                           (os.path.getsize(p) - 1024)))
    add("compressed: stream in the header cluster", "scomp",
        lambda p: comp_set(p, lambda e, x: (e & ~((1 << x) - 1)) | 512))
    add("compressed: stream over the L1 table", "scomp",
        lambda p: comp_set(p, lambda e, x: (e & ~((1 << x) - 1)) | l1o(p)))
    add("compressed: stream over the refcount table", "scomp",
        lambda p: comp_set(p, lambda e, x: (e & ~((1 << x) - 1)) | rto(p)))
    add("compressed: with the COPIED flag", "scomp",
        lambda p: comp_set(p, lambda e, x: e | C))
    return T


def random_case(seedpath, out, rng):
    """Flip bytes in the metadata clusters of a copy of seedpath; returns a
    description of the mutations."""
    m = Meta(seedpath, os.path.getsize(seedpath))
    cs = m.cs
    clusters = sorted(m.fixed | m.tables)
    shutil.copyfile(seedpath, out)
    data = bytearray(open(out, "rb").read())
    muts = []
    for _ in range(rng.randint(1, 4)):
        c = rng.choice(clusters)
        base = c * cs
        if c == 0:
            off = rng.randrange(0, 112)
        else:
            # prefer non-zero 8-byte entries: they are what the target reads
            end = min(cs, len(data) - base) & ~7
            nz = [i * 8 for i, (v,) in enumerate(
                struct.iter_unpack(">Q", data[base:base + end])) if v]
            if nz and rng.random() < 0.8:
                off = rng.choice(nz) + rng.randrange(8)
            else:
                off = rng.randrange(0, min(cs, len(data) - base))
        off += base
        kind = rng.random()
        old = data[off]
        if kind < 0.6:
            data[off] ^= 1 << rng.randrange(8)
        elif kind < 0.85:
            data[off] = rng.randrange(256)
        else:
            # a whole entry pointing at another metadata cluster
            off &= ~7
            v = (rng.choice(clusters) * cs) | (OFLAG_COPIED if rng.random() < 0.7 else 0)
            data[off:off + 8] = struct.pack(">Q", v)
        muts.append("%#x:%02x->%02x" % (off, old, data[off]))
    open(out, "wb").write(data)
    return " ".join(muts)


def generate(seeddir, outdir, seed, nrandom):
    """Build the corpus; returns [(id, seed, name, snap)]."""
    os.makedirs(outdir, exist_ok=True)
    cases = []
    for name, sd, fn, snap in targeted():
        n = len(cases)
        out = os.path.join(outdir, "%03d.qcow2" % n)
        shutil.copyfile(os.path.join(seeddir, sd + ".qcow2"), out)
        try:
            fn(out)
            err = None
        except Exception as ex:     # noqa: BLE001  (a generator bug)
            err = "generation failed: %r" % ex
        cases.append((n, sd, name, snap, err))
    for i in range(nrandom):
        n = len(cases)
        sd = SEEDS[i % len(SEEDS)]
        rng = random.Random(seed * 100003 + i)
        out = os.path.join(outdir, "%03d.qcow2" % n)
        desc = random_case(os.path.join(seeddir, sd + ".qcow2"), out, rng)
        cases.append((n, sd, "random %d (seed %d): %s" % (i, seed, desc), False, None))
    return cases


# ---------------------------------------------------------------------------
# Block I/O helpers

BLKDISCARD = 0x1277
BLKZEROOUT = 0x127f
BLKFLSBUF = 0x1261


class Dio:
    """O_DIRECT I/O through an aligned bounce buffer."""

    CHUNK = 1 * M

    def __init__(self, path, write):
        flags = (os.O_RDWR if write else os.O_RDONLY) | os.O_DIRECT
        self.fd = os.open(path, flags)
        self.buf = mmap.mmap(-1, self.CHUNK)

    def close(self):
        os.close(self.fd)
        self.buf.close()

    def read(self, off, ln):
        out = bytearray()
        while ln > 0:
            n = min(ln, self.CHUNK)
            mv = memoryview(self.buf)[:n]
            got = os.preadv(self.fd, [mv], off)
            mv.release()
            if got <= 0:
                raise OSError(errno.EIO, "short read")
            out += self.buf[:got]
            off += got
            ln -= got
        return bytes(out)

    def write(self, off, data):
        pos = 0
        while pos < len(data):
            n = min(len(data) - pos, self.CHUNK)
            self.buf[:n] = data[pos:pos + n]
            mv = memoryview(self.buf)[:n]
            os.pwritev(self.fd, [mv], off + pos)
            mv.release()
            pos += n


def run(cmd, timeout=IO_TIMEOUT):
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout)
        return p.returncode, p.stdout.decode(errors="replace")
    except subprocess.TimeoutExpired:
        return 124, "timeout"


def dm_dev(name):
    for d in os.listdir("/sys/block"):
        if d.startswith("dm-"):
            try:
                with open("/sys/block/%s/dm/name" % d) as f:
                    if f.read().strip() == name:
                        return "/dev/" + d
            except OSError:
                pass
    return None


def dm_create(name, table, ro):
    cmd = ["dmsetup", "create", name, "--noudevsync", "--table", table]
    if ro:
        cmd.insert(2, "--readonly")
    rc, out = run(cmd)
    if rc:
        return None, out
    for _ in range(100):
        dev = dm_dev(name)
        if dev and os.path.exists(dev):
            return dev, ""
        time.sleep(0.05)
    return None, "no device node for " + name


def dm_remove(name):
    if dm_dev(name) is None:
        return 0, ""
    return run(["dmsetup", "remove", "--noudevsync", "--retry", name])


def dm_status(name):
    rc, out = run(["dmsetup", "status", name])
    return out.strip() if rc == 0 else ""


class Kmsg:
    """The kernel log since the last take(), from /dev/kmsg."""

    def __init__(self):
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        os.lseek(self.fd, 0, os.SEEK_END)

    def take(self):
        lines = []
        while True:
            try:
                rec = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:     # overwritten records: go on
                continue
            if not rec:
                break
            rec = rec.decode(errors="replace")
            head, _, msg = rec.partition(";")
            lines.append(msg.split("\n", 1)[0])
        return lines


def in_child(fn, *args):
    """Run fn(*args) in a forked child; returns (result, hung).  The result
    (a short string) comes back through a pipe; a child that does not finish
    within IO_TIMEOUT is reported hung (it may be stuck in D state)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            res = fn(*args)
        except Exception as ex:     # noqa: BLE001
            res = "exception %r" % ex
        os.write(w, res.encode())
        os._exit(0)
    os.close(w)
    ready, _, _ = select.select([r], [], [], IO_TIMEOUT)
    if not ready:
        os.kill(pid, 9)
        os.close(r)
        return "", True
    res = b""
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        res += b
    os.close(r)
    os.waitpid(pid, 0)
    return res.decode(), False


def read_all(dev, size):
    """Read the whole device in 64 KiB direct reads; "bad first" result."""
    d = Dio(dev, False)
    bad, first = 0, -1
    for off in range(0, size, 64 * K):
        try:
            d.read(off, min(64 * K, size - off))
        except OSError:
            bad += 1
            if first < 0:
                first = off
    d.close()
    return "%d %d" % (bad, first)


def sig_block(n, tag):
    blk = (SIG + tag.encode()[:16].ljust(16, b".")) * 16     # 512 bytes
    return blk * (n // 512)


def exercise(dev, size, tag):
    """Writes (in place, partial, allocating), discards, write-zeroes and
    flushes across the device, then a full read.  Result:
    "werr rerr first_bad ops" (ops: the failing operations)."""
    d = Dio(dev, True)
    fails = []
    ops = [
        ("w", 0, 4 * K), ("w", 68 * K, 4 * K), ("w", 200 * K, 8 * K),
        ("w", 1 * M, 64 * K), ("w", 2 * M + 4 * K, 4 * K), ("w", 3 * M, 4 * K),
        ("d", 128 * K, 64 * K), ("z", 4 * M, 64 * K), ("w", 4 * M + 8 * K, 4 * K),
        ("f", 0, 0),
        ("w", 6 * M + 4 * K, 4 * K), ("w", size // 2 + 12 * K, 4 * K),
        ("d", size // 2 - 1 * M, 1 * M), ("w", size - 128 * K, 128 * K),
        ("w", 64 * K, 64 * K), ("w", 0, 64 * K),
        ("f", 0, 0),
    ]
    for kind, off, ln in ops:
        if off + ln > size:
            continue
        try:
            if kind == "w":
                d.write(off, sig_block(ln, tag))
            elif kind == "d":
                fcntl.ioctl(d.fd, BLKDISCARD, struct.pack("QQ", off, ln))
            elif kind == "z":
                fcntl.ioctl(d.fd, BLKZEROOUT, struct.pack("QQ", off, ln))
            else:
                os.fsync(d.fd)
        except OSError as ex:
            if ex.errno == errno.EOPNOTSUPP and kind in "dz":
                continue        # not an error of the image
            fails.append("%s@%#x:%s" % (kind, off, errno.errorcode.get(ex.errno, ex.errno)))
    d.close()
    rb = read_all(dev, size)
    return "%d %s %s" % (len(fails), rb, ",".join(fails) or "-")


# ---------------------------------------------------------------------------
# The checks on the disk after an image went through the target

def header_diff(orig, new, cs):
    """Bytes of the header cluster that changed outside the fields the
    target may update: the refcount table offset and clusters (48-59),
    on v3 the dirty and corrupt bits (72-79) and cleared autoclear bits
    (88-95: the spec says a writer that does not know them clears them).
    Returns the bad byte offsets."""
    bad = []
    v3 = int.from_bytes(orig[4:8], "big") >= 3
    o72, n72 = (int.from_bytes(x[72:80], "big") for x in (orig, new))
    o88, n88 = (int.from_bytes(x[88:96], "big") for x in (orig, new))
    for i in range(min(cs, len(orig))):
        if orig[i] == new[i] or 48 <= i < 60:
            continue
        # v3: the dirty and corrupt bits.  v2 headers end at 72 (a header
        # extension follows), so nothing there may change.  (The target once
        # wrote the corrupt bit there on v2 images; fixed.)
        if 72 <= i < 80 and v3 and (o72 ^ n72) & ~3 == 0:
            continue
        if 88 <= i < 96 and v3 and n88 & ~o88 == 0:
            continue
        bad.append(i)
    return bad


class Runner:
    def __init__(self, disk):
        self.disk = disk
        self.kmsg = Kmsg()
        self.tag = "%d" % os.getpid()
        self.lin = "hst%dl" % os.getpid()
        self.qc = "hst%dq" % os.getpid()
        rng = random.Random(4242)
        self.guard = rng.randbytes(GUARD)
        self.last_dm_line = 0.0
        self.counts = dict(images=0, refused=0, mapped=0, refused_rw=0, mapped_rw=0,
                           read_errors=0, write_errors=0, ratelimited=0, failed=0,
                           genfail=0)
        self.ktap = 0
        self.bailed = False
        self.kmsg_ro = []

    def ok(self, good, desc, diag):
        self.ktap += 1
        if not good:
            self.counts["failed"] += 1
        if not good or VERBOSE:
            for d in diag:
                print("# " + d)
        print("%s %d %s" % ("ok" if good else "not ok", self.ktap, desc))
        sys.stdout.flush()

    def place(self, img, region):
        d = Dio(self.disk, True)
        body = img + bytes(region - len(img))
        d.write(0, self.guard)
        d.write(GUARD, body)
        d.write(GUARD + region, self.guard)
        os.fsync(d.fd)
        d.close()

    def readback(self, region):
        d = Dio(self.disk, False)
        data = d.read(0, 2 * GUARD + region)
        d.close()
        return data[:GUARD], data[GUARD:GUARD + region], data[GUARD + region:]

    def cleanup(self):
        dm_remove(self.qc)
        dm_remove(self.lin)

    def one(self, n, seed, name, snap, err, path, vsize):
        c = self.counts
        c["images"] += 1
        desc = "%03d %s: %s" % (n, seed, name)
        diag = []
        if err:
            c["genfail"] += 1
            self.ok(False, desc, [err])
            return
        t_start = time.time()
        self.kmsg.take()
        self.kmsg_ro = None
        img = open(path, "rb").read()
        img += bytes(ru(len(img), 512) - len(img))
        orig_len = ru(len(img), 64 * K)
        region = orig_len + GROWTH
        try:
            self.place(img, region)
        except OSError as ex:
            self.ok(False, desc, ["cannot place the image: %r" % ex])
            return
        lin, out = dm_create(self.lin, "0 %d linear %s %d" % (region // 512, self.disk,
                                                              GUARD // 512), False)
        if not lin:
            self.ok(False, desc, ["linear device: " + out.strip()])
            return
        opts = " 2 snapshot 1" if snap else ""
        table = "0 %d qcow2 %s%s" % (vsize // 512, lin, opts)
        io_err = False
        hung = False
        refused = False
        mapped_rw = False
        status = ""
        # 1. read-only: map, read everything
        dev, out = dm_create(self.qc, table, True)
        if not dev:
            refused = True
            c["refused"] += 1
            diag.append("read-only table refused: " + out.strip().splitlines()[-1]
                        if out.strip() else "read-only table refused")
        else:
            c["mapped"] += 1
            res, hung = in_child(read_all, dev, vsize)
            if hung:
                diag.append("HANG: the full read did not finish in %d s" % IO_TIMEOUT)
            else:
                bad = int(res.split()[0]) if res and res[0].isdigit() else -1
                if bad:
                    io_err = True
                    c["read_errors"] += 1
                    diag.append("read-only pass: %s bad 64k reads (first at %s)" % tuple(
                        res.split()[:2]) if bad > 0 else "read pass: " + res)
                status = dm_status(self.qc)
            rc, out = dm_remove(self.qc)
            if rc:
                diag.append("removing the read-only device failed: " + out.strip())
                hung = hung or rc == 124
        # The read-only pass must not have written anything.
        if not hung:
            g1, body, g2 = self.readback(region)
            if body != img + bytes(region - len(img)):
                diag.append("FAIL: the read-only mapping changed the image")
            if g1 != self.guard or g2 != self.guard:
                diag.append("FAIL: guard region changed after the read-only pass")
        # 2. read-write: writes, discards, flushes, read, remove (for the
        # snapshot cases the active image, whatever snapshot 1 did)
        rw_refused = False
        if (dev or snap) and not hung:
            self.kmsg_ro = self.kmsg.take()
            rtable = "0 %d qcow2 %s" % (vsize // 512, lin)
            dev, out = dm_create(self.qc, rtable, False)
            if not dev:
                rw_refused = True
                c["refused_rw"] += 1
                diag.append("read-write table refused: " + (out.strip().splitlines() or [""])[-1])
            else:
                mapped_rw = True
                c["mapped_rw"] += 1
                res, hung = in_child(exercise, dev, vsize, "%03d" % n)
                if hung:
                    diag.append("HANG: writes/flush/read did not finish in %d s" % IO_TIMEOUT)
                else:
                    f = res.split()
                    if len(f) == 4 and f[0].isdigit():
                        if f[0] != "0":
                            io_err = True
                            c["write_errors"] += 1
                            diag.append("read-write: failed ops " + f[3])
                        if f[1] != "0":
                            io_err = True
                            diag.append("read-write pass: %s bad 64k reads (first at %s)"
                                        % (f[1], f[2]))
                    else:
                        diag.append("FAIL: exercise: " + res)
                    status = dm_status(self.qc)
                    diag.append("status: " + status)
                rc, out = dm_remove(self.qc)
                if rc:
                    diag.append("removing the read-write device failed: " + out.strip())
                    hung = hung or rc == 124
        if not hung:
            rc, out = dm_remove(self.lin)
            if rc:
                diag.append("FAIL: removing the linear device: " + out.strip())
        # 3. the kernel log of this image
        rest = self.kmsg.take()
        if self.kmsg_ro is None:
            ro_log, rw_log = rest, []
        else:
            ro_log, rw_log = self.kmsg_ro, rest
        log = ro_log + rw_log
        reports = [ln for ln in log if REPORT_RE.search(ln)]
        ctr = [ln for ln in log if CTR_RE.search(ln)]
        qlines = [ln for ln in log if "qcow2" in ln]
        dmlines = [ln for ln in log if "device-mapper:" in ln]
        if reports:
            diag.append("FAIL: kernel report:")
            diag += ["  " + ln for ln in reports[:20]]
        if refused and not [ln for ln in ro_log if CTR_RE.search(ln)]:
            diag.append("FAIL: refused without a 'device-mapper: table: ...: qcow2: ' line")
        if rw_refused and not [ln for ln in rw_log if CTR_RE.search(ln)]:
            diag.append("FAIL: read-write table refused without a qcow2 reason line")
        if io_err and not qlines:
            # DMERR_LIMIT shares dm's ratelimit (10 lines per 5 s): only
            # excuse a missing line if the window may still be exhausted.
            if t_start - self.last_dm_line < 6.0:
                c["ratelimited"] += 1
                diag.append("I/O errors, no qcow2 line (dm ratelimit window active)")
            else:
                diag.append("FAIL: I/O errors without a qcow2 line in the kernel log")
        if dmlines:
            self.last_dm_line = time.time()
        for ln in ctr[:2]:
            diag.append("reason: " + CTR_RE.search(ln).group(1))
        if qlines and not ctr:
            diag.append("log: " + qlines[0][:200])
        # 4. the disk: guards, header, writes only where the image refers
        if hung:
            diag.append("FAIL: hang; giving up the remaining images")
            self.bailed = True
        else:
            diag += self.check_disk(path, img, region, orig_len, mapped_rw)
        good = not any(x.startswith(("FAIL", "HANG")) for x in diag)
        self.ok(good, desc, diag)

    @staticmethod
    def final_meta(path, body, region):
        """Metadata clusters of the image as the target left it."""
        tmp = path + ".final"
        with open(tmp, "wb") as f:
            f.write(body)
        try:
            fm = Meta(tmp, region)
            return fm.fixed | fm.tables
        finally:
            os.unlink(tmp)

    def check_disk(self, path, img, region, orig_len, wrote):
        out = []
        g1, body, g2 = self.readback(region)
        if g1 != self.guard:
            out.append("FAIL: guard before the image changed")
        if g2 != self.guard:
            out.append("FAIL: guard after the image changed")
        orig = img + bytes(region - len(img))
        if not wrote:
            if body != orig:
                out.append("FAIL: image changed without a read-write mapping")
            return out
        m = Meta(path, orig_len)
        cs = m.cs
        bad = header_diff(orig[:cs], body[:cs], cs)
        if bad:
            out.append("FAIL: header cluster changed outside the documented fields at "
                       "bytes %s" % ",".join(map(str, bad[:12])))
        allowed = m.referenced()
        changed, outside, sig_meta, zeroed = [], [], [], []
        fixed_meta = m.fixed
        if orig[48:60] != body[48:60]:
            # the refcount table moved: its old clusters were freed
            out.append("refcount table moved")
            fixed_meta = fixed_meta - m.reftable
        for ci in range(orig_len // cs):
            a, b = ci * cs, (ci + 1) * cs
            if body[a:b] == orig[a:b]:
                continue
            changed.append(ci)
            if ci not in allowed:
                rc = m.refcount(ci)
                if rc not in (0, None):
                    outside.append(ci)
            if ci in fixed_meta or ci in m.tables:
                if SIG in body[a:b]:
                    sig_meta.append(ci)
                if ci in (m.l1 | m.reftable) & fixed_meta and not any(body[a:b]) \
                        and any(orig[a:b]):
                    zeroed.append(ci)
        if outside:
            out.append("FAIL: wrote clusters the image neither referenced nor had free: %s"
                       % ",".join("%#x" % (x * cs) for x in outside[:8]))
        if sig_meta:
            # A metadata cluster the target stopped using (an L2 table copied
            # because its L1 entry lacked the copied flag, then freed) may
            # hold guest data later: only metadata of the final image counts.
            reused = set(sig_meta) - self.final_meta(path, body, region)
            if reused:
                out.append("metadata clusters freed and reused for data: %s"
                           % ",".join("%#x" % (x * cs) for x in sorted(reused)[:8]))
                sig_meta = [x for x in sig_meta if x not in reused]
        # Guest data over metadata, or metadata freed (found by this test:
        # L2 entries pointing at the header, a table, a refcount block or
        # another L2 table; the target now keeps an index of its metadata).
        if sig_meta:
            kinds = []
            for x in sig_meta[:8]:
                k = ("header" if x == 0 else "L1" if x in m.l1 else
                     "reftable" if x in m.reftable else
                     "snapshot/L1" if x in m.fixed else "L2/refblock")
                kinds.append("%#x(%s)" % (x * cs, k))
            out.append("FAIL: guest data written over metadata clusters: " + ",".join(kinds))
        if zeroed:
            out.append("FAIL: L1/refcount table clusters zeroed: %s"
                       % ",".join("%#x" % (x * cs) for x in zeroed[:8]))
        grown = sum(1 for ci in range(orig_len // cs, region // cs)
                    if any(body[ci * cs:(ci + 1) * cs]))
        out.append("changed %d clusters in the image, %d in the growth area"
                   % (len(changed), grown))
        return out

    def summary(self):
        c = self.counts
        print("# summary: images %(images)d refused %(refused)d mapped %(mapped)d "
              "refused_rw %(refused_rw)d mapped_rw %(mapped_rw)d "
              "read_errors %(read_errors)d write_errors %(write_errors)d "
              "ratelimited_logs %(ratelimited)d failed %(failed)d "
              "generation_failures %(genfail)d" % c)


def main():
    if len(sys.argv) < 6 or sys.argv[1] not in ("gen", "run"):
        sys.stderr.write(__doc__)
        return 2
    seeddir, outdir = sys.argv[2], sys.argv[3]
    seed, nrandom = int(sys.argv[4]), int(sys.argv[5])
    cases = generate(seeddir, outdir, seed, nrandom)
    vs = {s: Image(os.path.join(seeddir, s + ".qcow2")).h["size"] for s in SEEDS}
    if sys.argv[1] == "gen":
        print("1..%d" % len(cases))
        bad = 0
        for n, sd, name, _snap, err in cases:
            path = os.path.join(outdir, "%03d.qcow2" % n)
            same = open(path, "rb").read() == open(
                os.path.join(seeddir, sd + ".qcow2"), "rb").read()
            good = not err and not same
            bad += not good
            print("%s %d %03d %s: %s%s" % ("ok" if good else "not ok", n + 1, n, sd, name,
                                         " # " + (err or "unchanged") if not good else ""))
        print("# summary: images %d generated, %d bad" % (len(cases), bad))
        return 1 if bad else 0
    disk = sys.argv[6]
    r = Runner(disk)
    print("1..%d" % len(cases))
    sys.stdout.flush()
    t0 = time.time()
    try:
        for n, sd, name, snap, err in cases:
            if r.bailed:
                r.ok(False, "%03d %s: %s # not run after a hang" % (n, sd, name), [])
                continue
            r.one(n, sd, name, snap, err, os.path.join(outdir, "%03d.qcow2" % n), vs[sd])
            if not r.bailed:
                r.cleanup()
    finally:
        if not r.bailed:
            r.cleanup()
    r.summary()
    print("# %d images in %.0f s" % (len(cases), time.time() - t0))
    return 1 if r.counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
