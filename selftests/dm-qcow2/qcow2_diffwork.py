#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Seeded differential workload for the dm-qcow2 write selftests.

One process applies the same sequence of operations to a block device (the
mapped qcow2 image) and to a plain raw file (the reference), so that hundreds
of operations cost no fork/exec (each one is expensive under TCG).

Subcommands:

  run --seed S --dev DEV --ref REF [options]
      Apply a random sequence of operations to DEV and REF (REF must exist
      and be as large as the part of DEV to use; the smaller size is used).
        write    pwrite() of random, constant-byte or zero data, buffered,
                 at any byte offset (unaligned, 512-aligned, straddling a
                 cluster boundary, or in a small "hot" region so that data
                 is overwritten), 512 B .. 256 KiB (--max-io)
        dwrite   O_DIRECT pwrite(), 4 KiB aligned
        discard  BLKDISCARD ioctl (512-aligned: partial clusters, whole
                 clusters, runs of clusters)
        zeroout  BLKZEROOUT ioctl (same ranges)
        flush    fsync() or fdatasync() (a device flush), or BLKFLSBUF
                 (= blockdev --flushbufs: page cache written back and
                 dropped, no device flush)
        dropc    fsync + BLKFLSBUF: later unaligned writes read-modify-write
                 through the target again
        check    O_DIRECT pread() of a range, compared with REF right away
      On REF, discard and zeroout write zeros.  With --discard-undefined a
      discarded range is "don't care" until it is written again (a v2 image
      with a backing file cannot store zero clusters: the target leaves a
      discarded cluster as it is); the ranges are written to --mask-out.
      Every operation is logged to --log (one line each: number, op,
      offset, length), so a mismatch can be traced to the operations that
      touched its offset.  With --compare, DEV and REF are compared as by
      "compare" at the end.  Exit status 0, 1 if an operation failed, a
      check read differed or (--compare) the final comparison failed.
      --weights OP=N,... changes the operation mix (OP: write, dwrite,
      discard, zeroout, flush, dropc, check; N=0 drops it).
      For crash-consistency tests (test_crash_replay.sh):
      --journal DIR records what a crash may and may not lose: DIR/initial
      (REF before the run), DIR/ops (every change of REF, one line each,
      and "F K" after the K-th durable flush, "F 0" at the start) and
      DIR/data (the data written).  A durable flush is an fsync/fdatasync
      of DEV that returned (buffered and O_DIRECT writes issued before it
      are then acknowledged); BLKFLSBUF alone is not one.  --mark-dev NAME
      sends "dmsetup message NAME 0 mark diffwork-K" after each durable
      flush K (and diffwork-0 before the first operation), so a replayed
      dm-log-writes log tells which flushes completed before a crash point.

  crashcheck IMAGE --journal DIR [--results FILE] [--lazy]
             [--snapshot NAME=RAW] [--mark MARK]
      Check one crash point of a replayed qcow2 IMAGE (run by replay-log
      --check-cmd; the last mark comes from $REPLAY_MARK unless --mark is
      given, the entry number from $REPLAY_ENTRY).  `qemu-img check` must
      find no corruption: with --lazy and the dirty bit set, refcount
      errors are allowed if `qemu-img check -r all` on a copy repairs
      them; leaked clusters are counted, not failed.  QEMU's view of IMAGE
      (qemu-img convert) must hold, for every 512-byte sector, the data of
      durable flush K (K from the mark diffwork-K; 0 without a mark), or,
      for a sector changed between flush K and flush K+1, one of the
      values it had during that interval (in-flight writes may or may not
      have reached the disk, but nothing else may appear: no stale data).
      The same holds in a torn state of replay-log --torn ($REPLAY_TORN:
      only the last writes before a flush applied).  --snapshot: internal
      snapshot NAME must read as RAW.  One line per point is appended to
      --results.  Exit 0 if the point is consistent.

  compare A B [--mask FILE] [--log OPLOG]
      Compare two files or devices byte by byte (block devices are read
      with O_DIRECT), skipping the "don't care" ranges of --mask.  On a
      difference print the first differing offset, the number of differing
      512-byte sectors and the operations of OPLOG covering that offset.
      Exit 0 if equal, 1 if not.

  fswork DIR --seed S [--files N] [--sums OUT] [--fstrim-at FRACTION]
      File-level workload in a mounted file system: N files (default 300)
      of random sizes (empty, odd, up to 1 MiB, a few up to 4 MiB; random,
      constant or sparse content) in nested directories, written in
      chunks, some with fsync/fdatasync; then overwrites in the middle,
      appends, truncations, renames and deletes, with a sync(1)-like
      os.sync() and (--fstrim-at) an fstrim of DIR part way through.
      OUT gets the sha256sum of every remaining file as the program
      expects it (computed from its own model, not read back), in
      `sha256sum -c` format relative to DIR.

  fill FILE SIZE --seed S [--compressible] [--holes]
      Create FILE of SIZE bytes with seeded content (random bytes; with
      --compressible, random runs padded with zeros and repeated short
      random patterns, so that deflate/zstd shrink it; with --holes some
      64 KiB regions stay zero).

Operation mix and sizes are chosen from the seed only, so a run is
reproduced exactly by the same seed, size, cluster size and options.
"""

import argparse
import fcntl
import mmap
import os
import random
import stat
import struct
import sys

BLKDISCARD = 0x1277
BLKZEROOUT = 0x127F
BLKFLSBUF = 0x1261
BLKGETSIZE64 = 0x80081272
KIB = 1024


def dev_size(fd):
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
        return struct.unpack("Q", buf)[0]
    return st.st_size


def is_blk(fd):
    return stat.S_ISBLK(os.fstat(fd).st_mode)


class Intervals:
    """A set of disjoint half-open byte ranges."""

    def __init__(self):
        self.r = []

    def add(self, s, e):
        out, placed = [], False
        for a, b in self.r:
            if b < s or a > e:
                out.append((a, b))
            else:
                s, e = min(a, s), max(b, e)
        out.append((s, e))
        self.r = sorted(out)

    def sub(self, s, e):
        out = []
        for a, b in self.r:
            if b <= s or a >= e:
                out.append((a, b))
                continue
            if a < s:
                out.append((a, s))
            if b > e:
                out.append((e, b))
        self.r = out

    def overlaps(self, s, e):
        return [(max(a, s), min(b, e)) for a, b in self.r if a < e and b > s]


def aligned_buf(n):
    """Page-aligned writable buffer (anonymous mmap) for O_DIRECT."""
    return mmap.mmap(-1, max(n, mmap.PAGESIZE))


class Work:
    def __init__(self, a):
        self.a = a
        self.rnd = random.Random(a.seed)
        self.fd = os.open(a.dev, os.O_RDWR)
        self.dfd = -1
        if not a.no_direct:
            try:
                self.dfd = os.open(a.dev, os.O_RDWR | os.O_DIRECT)
            except OSError:
                pass    # no O_DIRECT (a regular file on tmpfs): no dwrite/check
        self.rfd = os.open(a.ref, os.O_RDWR)
        self.blk = is_blk(self.fd)
        self.size = min(dev_size(self.fd), dev_size(self.rfd))
        self.size -= self.size % 4096
        self.cs = a.cluster
        self.undef = Intervals()
        self.log = open(a.log, "w") if a.log else None
        self.n = 0
        self.errors = 0
        self.counts = {}
        hot_len = max(4 * self.cs, 1 << 20)
        hot_len = min(hot_len, self.size // 4)
        hot_len -= hot_len % 512
        self.hot = (self.rnd.randrange(0, (self.size - hot_len) // 512 + 1) * 512, hot_len)
        self.jops = self.jdata = None
        self.nflush = 0
        if a.journal:
            os.makedirs(a.journal, exist_ok=True)
            with open(os.path.join(a.journal, "initial"), "wb") as f:
                off = 0
                while off < self.size:
                    chunk = os.pread(self.rfd, min(1 << 20, self.size - off), off)
                    f.write(chunk)
                    off += len(chunk)
            self.jops = open(os.path.join(a.journal, "ops"), "w")
            self.jdata = open(os.path.join(a.journal, "data"), "wb")
            self.jpos = 0

    # -- crash journal --------------------------------------------------
    def ref_write(self, data, off):
        os.pwrite(self.rfd, data, off)
        if self.jops:
            if any(data):
                self.jops.write("w %d %d %d %d\n" % (off, len(data), self.jpos, self.n))
                self.jdata.write(data)
                self.jpos += len(data)
            else:
                self.jops.write("z %d %d %d\n" % (off, len(data), self.n))

    def durable(self, first=False):
        """A device flush returned: record it and mark the log."""
        if not self.jops and not self.a.mark_dev:
            return
        if not first:
            self.nflush += 1
        if self.jops:
            self.jdata.flush()
            self.jops.write("F %d %d\n" % (self.nflush, self.n))
            self.jops.flush()
        if self.a.mark_dev:
            import subprocess
            r = subprocess.run(["dmsetup", "message", self.a.mark_dev, "0", "mark",
                                "diffwork-%d" % self.nflush],
                               capture_output=True, text=True)
            if r.returncode:
                self.fail("mark diffwork-%d: %s" % (self.nflush, r.stderr.strip()))

    # -- choosing ranges ------------------------------------------------
    def io_len(self, lo=512, align=1):
        r = self.rnd
        hi = self.a.max_io
        if r.random() < 0.5:
            n = int(2 ** r.uniform(9, hi.bit_length() - 1))
        else:
            n = r.randrange(lo, hi + 1)
        if r.random() < 0.3 and self.cs <= hi:
            n = self.cs * r.randrange(1, max(2, hi // self.cs + 1))
        n = max(lo, min(n, hi))
        if align > 1:
            n = max(align, n - n % align)
        return n

    def offset(self, n, align=1):
        r, cs, size = self.rnd, self.cs, self.size
        k = r.random()
        if k < 0.25:
            # straddle a cluster boundary
            b = r.randrange(1, max(2, size // cs)) * cs
            off = b - r.randrange(1, min(n, cs) + 1)
        elif k < 0.5:
            # in the hot region: overwrite what was written before
            off = self.hot[0] + r.randrange(0, self.hot[1])
        elif k < 0.65:
            # cluster aligned
            off = r.randrange(0, size // cs) * cs
        else:
            off = r.randrange(0, size)
        off -= off % align
        off = max(0, min(off, size - n))
        off -= off % align
        return off

    # -- logging and results -------------------------------------------
    def note(self, op, off, n, extra=""):
        self.n += 1
        self.counts[op] = self.counts.get(op, 0) + 1
        if self.log:
            self.log.write("%d %s %d %d%s\n" % (self.n, op, off, n, extra))

    def fail(self, msg):
        self.errors += 1
        print("# op %d: %s" % (self.n, msg), flush=True)

    def data(self, n):
        r = self.rnd
        k = r.random()
        if k < 0.7:
            return r.randbytes(n), "rnd"
        if k < 0.85:
            b = r.randrange(1, 256)
            return bytes([b]) * n, "p%02x" % b
        return bytes(n), "zero"

    # -- operations -----------------------------------------------------
    def op_write(self):
        r = self.rnd
        k = r.random()
        if k < 0.4:
            n = self.io_len(1)
            n = max(1, n - r.randrange(0, 512))
            off = self.offset(n)                  # unaligned
        else:
            n = self.io_len(512, 512)
            off = self.offset(n, 512)
        buf, kind = self.data(n)
        self.note("write", off, n, " " + kind)
        try:
            if os.pwrite(self.fd, buf, off) != n:
                self.fail("short write at %d+%d" % (off, n))
        except OSError as e:
            self.fail("write %d+%d: %s" % (off, n, e))
        self.ref_write(buf, off)
        self.undef.sub(off, off + n)

    def op_dwrite(self):
        n = self.io_len(4096, 4096)
        off = self.offset(n, 4096)
        data, kind = self.data(n)
        buf = aligned_buf(n)
        buf[:n] = data
        self.note("dwrite", off, n, " " + kind)
        try:
            got = os.pwritev(self.dfd, [memoryview(buf)[:n]], off)
            if got != n:
                self.fail("short direct write at %d+%d" % (off, n))
        except OSError as e:
            self.fail("direct write %d+%d: %s" % (off, n, e))
        buf.close()
        self.ref_write(data, off)
        self.undef.sub(off, off + n)

    def zrange(self):
        r, cs = self.rnd, self.cs
        k = r.random()
        if k < 0.35:
            # whole clusters
            cnt = r.randrange(1, 5)
            off = r.randrange(0, max(1, self.size // cs - cnt)) * cs
            n = min(cnt * cs, self.size - off)
        elif k < 0.6:
            # straddling boundaries, 512 aligned
            n = self.io_len(512, 512)
            off = self.offset(n, 512)
        elif k < 0.8:
            # in the hot region
            n = self.io_len(512, 512)
            off = self.hot[0] + r.randrange(0, self.hot[1] // 512) * 512
            off = max(0, min(off, self.size - n))
        else:
            n = r.randrange(1, 9) * 512
            off = r.randrange(0, self.size // 512 - 8) * 512
        return off, n

    def op_zero(self, discard):
        off, n = self.zrange()
        op = "discard" if discard else "zeroout"
        self.note(op, off, n)
        try:
            if self.blk:
                fcntl.ioctl(self.fd, BLKDISCARD if discard else BLKZEROOUT,
                            struct.pack("QQ", off, n))
            else:
                os.pwrite(self.fd, bytes(n), off)   # self-test on a file
        except OSError as e:
            self.fail("%s %d+%d: %s" % (op, off, n, e))
        self.ref_write(bytes(n), off)
        if discard and self.a.discard_undefined:
            self.undef.add(off, off + n)
        else:
            self.undef.sub(off, off + n)

    def op_flush(self):
        k = self.rnd.randrange(3)
        self.note("flush", 0, 0, " " + ("fsync", "fdatasync", "flushbufs")[k])
        try:
            if k == 0:
                os.fsync(self.fd)
            elif k == 1:
                os.fdatasync(self.fd)
            elif self.blk:
                fcntl.ioctl(self.fd, BLKFLSBUF, 0)
        except OSError as e:
            self.fail("flush: %s" % e)
            return
        if k < 2:
            self.durable()

    def op_dropc(self):
        self.note("dropc", 0, 0)
        try:
            os.fsync(self.fd)
            self.durable()
            if self.blk:
                fcntl.ioctl(self.fd, BLKFLSBUF, 0)
        except OSError as e:
            self.fail("drop cache: %s" % e)

    def op_check(self):
        n = self.io_len(4096, 4096)
        off = self.offset(n, 4096)
        self.note("check", off, n)
        buf = aligned_buf(n)
        try:
            got = os.preadv(self.dfd, [memoryview(buf)[:n]], off)
        except OSError as e:
            self.fail("direct read %d+%d: %s" % (off, n, e))
            return
        want = os.pread(self.rfd, n, off)
        have = buf[:n]
        buf.close()
        if got != n:
            self.fail("short direct read %d+%d: %d" % (off, n, got))
            return
        if have == want:
            return
        for a, b in self.undef.overlaps(off, off + n):
            have = have[:a - off] + want[a - off:b - off] + have[b - off:]
        if have != want:
            i = next(i for i in range(n) if have[i] != want[i])
            self.fail("check read %d+%d differs from the reference at byte %d"
                      % (off, n, off + i))

    def run(self):
        ops = [("write", 40, self.op_write),
               ("discard", 10, lambda: self.op_zero(True)),
               ("zeroout", 10, lambda: self.op_zero(False)),
               ("flush", 8, self.op_flush),
               ("dropc", 4, self.op_dropc)]
        if self.dfd >= 0:
            ops += [("dwrite", 12, self.op_dwrite), ("check", 10, self.op_check)]
        if self.a.no_discard:
            ops = [o for o in ops if o[0] != "discard"]
        if self.a.weights:
            w = dict((k, int(v)) for k, v in
                     (x.split("=") for x in self.a.weights.split(",")))
            ops = [(o, w.get(o, wt), fn) for o, wt, fn in ops if w.get(o, wt) > 0]
        self.durable(first=True)
        total = sum(w for _, w, _ in ops)
        for _ in range(self.a.ops):
            x = self.rnd.randrange(total)
            for _, w, fn in ops:
                if x < w:
                    fn()
                    break
                x -= w
        self.note("flush", 0, 0, " final")
        try:
            os.fsync(self.fd)
            self.durable()
            if self.blk:
                fcntl.ioctl(self.fd, BLKFLSBUF, 0)
        except OSError as e:
            self.fail("final flush: %s" % e)
        os.fsync(self.rfd)
        if self.jops:
            self.jops.close()
            self.jdata.close()
        if self.a.mask_out:
            with open(self.a.mask_out, "w") as f:
                for s, e in self.undef.r:
                    f.write("%d %d\n" % (s, e))
        print("# %d ops (%s) over %d bytes, cluster %d, %d error(s)" %
              (self.n, " ".join("%s:%d" % kv for kv in sorted(self.counts.items())),
               self.size, self.cs, self.errors), flush=True)
        if self.jops or self.a.mark_dev:
            print("# %d durable flushes" % self.nflush, flush=True)
        if self.log:
            self.log.close()
        rc = 1 if self.errors else 0
        if self.a.compare:
            if compare(self.a.dev, self.a.ref, self.undef, self.a.log, self.cs):
                print("# the device differs from the reference after the run")
                rc = 1
        return rc


def cmd_run(a):
    return Work(a).run()


def read_mask(path):
    iv = Intervals()
    if path:
        with open(path) as f:
            for line in f:
                s, e = line.split()
                iv.add(int(s), int(e))
    return iv


def cmd_compare(a):
    return compare(a.a, a.b, read_mask(a.mask), a.log, a.cluster)


def compare(path_a, path_b, mask, log=None, cluster=0):
    chunk = 1 << 20
    fds, bufs = [], []
    for p in (path_a, path_b):
        fd = os.open(p, os.O_RDONLY)
        if is_blk(fd):
            os.close(fd)
            fd = os.open(p, os.O_RDONLY | os.O_DIRECT)
        fds.append(fd)
        bufs.append(aligned_buf(chunk))
    sizes = [dev_size(fd) for fd in fds]
    rc = 0
    if sizes[0] != sizes[1]:
        print("# size differs: %s %d bytes, %s %d bytes" % (path_a, sizes[0], path_b, sizes[1]))
        rc = 1
    size = min(sizes)
    first, nsec, off = -1, 0, 0
    while off < size:
        n = min(chunk, size - off)
        got = []
        for fd, buf in zip(fds, bufs):
            k = os.preadv(fd, [memoryview(buf)[:n]], off)
            if k != n:
                print("# short read at %d (%d of %d bytes)" % (off, k, n))
                rc = 1
                break
            got.append(buf[:n])
        if len(got) != 2:
            break
        x, y = got
        if x != y:
            for s, e in mask.overlaps(off, off + n):
                x = x[:s - off] + y[s - off:e - off] + x[e - off:]
            if x != y:
                for i in range(0, n, 512):
                    if x[i:i + 512] != y[i:i + 512]:
                        nsec += 1
                        if first < 0:
                            j = next(j for j in range(i, i + 512) if x[j] != y[j])
                            first = off + j
        off += n
    if first >= 0:
        rc = 1
        print("# %s and %s differ: first at byte %d (cluster-relative %d), "
              "%d differing 512-byte sector(s)" %
              (path_a, path_b, first, first % cluster if cluster else first, nsec))
        if log:
            hits = []
            with open(log) as f:
                for line in f:
                    w = line.split()
                    o, n = int(w[2]), int(w[3])
                    if o <= first < o + n:
                        hits.append(line.rstrip())
            print("# operations covering byte %d (of %s): %s" %
                  (first, log, "; ".join(hits[-8:]) if hits else "none"))
    for fd in fds:
        os.close(fd)
    return rc


def cmd_fswork(a):
    import hashlib
    import subprocess
    rnd = random.Random(a.seed)
    root = a.dir
    files = {}          # relative path -> bytearray (expected content)
    dirs = ["d%02d/s%d" % (i, j) for i in range(8) for j in range(3)]
    fixed = [0, 1, 511, 512, 513, 4095, 4096, 4097, 65535, 65536, 65537]

    def size_for(i):
        if i < len(fixed):
            return fixed[i]
        if rnd.random() < 0.03:
            return rnd.randrange(1 << 20, 4 << 20)
        return min(int(rnd.expovariate(1 / 40000)), 1 << 20)

    def content(n):
        k = rnd.random()
        if k < 0.6:
            return bytearray(rnd.randbytes(n))
        if k < 0.8:
            return bytearray([rnd.randrange(256)]) * n
        b = bytearray(n)        # mostly zeros: written sparse below
        for _ in range(n // 8192 + 1):
            if n:
                p = rnd.randrange(n)
                q = min(n, p + rnd.randrange(1, 4096))
                b[p:q] = rnd.randbytes(q - p)
        return b

    def write_file(rel, data, sparse=False):
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        off = 0
        while off < len(data):
            n = min(len(data) - off, rnd.choice((4096, 65536, 131072, 12345)))
            chunk = bytes(data[off:off + n])
            if sparse and not any(chunk):
                off += n
                continue
            os.pwrite(fd, chunk, off)
            off += n
        os.ftruncate(fd, len(data))
        k = rnd.random()
        if k < 0.3:
            os.fsync(fd)
        elif k < 0.4:
            os.fdatasync(fd)
        os.close(fd)

    nfiles = a.files
    trim_at = int(nfiles * a.fstrim_at) if a.fstrim_at else -1
    counts = {"create": 0, "overwrite": 0, "append": 0, "truncate": 0,
              "rename": 0, "delete": 0, "sync": 0, "fstrim": 0}
    for i in range(nfiles):
        rel = "%s/f%04d.bin" % (rnd.choice(dirs), i)
        data = content(size_for(i))
        write_file(rel, data, sparse=rnd.random() < 0.3)
        files[rel] = data
        counts["create"] += 1
        # modify an existing file now and then
        if files and rnd.random() < 0.4:
            victim = rnd.choice(sorted(files))
            d = files[victim]
            path = os.path.join(root, victim)
            k = rnd.random()
            if k < 0.35 and len(d) > 0:
                off = rnd.randrange(len(d))
                n = min(len(d) - off, rnd.randrange(1, 200000))
                new = rnd.randbytes(n)
                fd = os.open(path, os.O_WRONLY)
                os.pwrite(fd, new, off)
                if rnd.random() < 0.5:
                    os.fsync(fd)
                os.close(fd)
                d[off:off + n] = new
                counts["overwrite"] += 1
            elif k < 0.55:
                new = rnd.randbytes(rnd.randrange(1, 100000))
                with open(path, "ab") as f:
                    f.write(new)
                d += new
                counts["append"] += 1
            elif k < 0.65:
                n = rnd.randrange(len(d) + 1)
                os.truncate(path, n)
                del d[n:]
                counts["truncate"] += 1
            elif k < 0.75:
                to = "%s/r%04d.bin" % (rnd.choice(dirs), i)
                os.makedirs(os.path.dirname(os.path.join(root, to)), exist_ok=True)
                os.rename(path, os.path.join(root, to))
                files[to] = files.pop(victim)
                counts["rename"] += 1
            else:
                os.unlink(path)
                del files[victim]
                counts["delete"] += 1
        if i % 97 == 96:
            os.sync()
            counts["sync"] += 1
        if i == trim_at:
            os.sync()
            r = subprocess.run(["fstrim", root], capture_output=True, text=True)
            if r.returncode:
                print("# fstrim %s failed: %s" % (root, r.stderr.strip()))
                return 1
            counts["fstrim"] += 1
    os.sync()
    total = sum(len(d) for d in files.values())
    if a.sums:
        with open(a.sums, "w") as f:
            for rel in sorted(files):
                f.write("%s  ./%s\n" % (hashlib.sha256(files[rel]).hexdigest(), rel))
    print("# fswork seed %d: %d files, %d bytes (%s)" %
          (a.seed, len(files), total,
           " ".join("%s:%d" % kv for kv in sorted(counts.items()))), flush=True)
    return 0


def crash_state(jdir, k):
    """The data of durable flush k, and for the sectors changed between
    flush k and flush k+1 the set of values each had in that interval."""
    with open(os.path.join(jdir, "initial"), "rb") as f:
        exp = bytearray(f.read())
    with open(os.path.join(jdir, "ops")) as f:
        lines = f.read().split("\n")
    data = open(os.path.join(jdir, "data"), "rb")

    def apply(buf, w):
        off, n = int(w[1]), int(w[2])
        if w[0] == "w":
            data.seek(int(w[3]))
            buf[off:off + n] = data.read(n)
        else:
            buf[off:off + n] = bytes(n)
        return off, n

    i, found, last = 0, False, -1
    while i < len(lines):
        w = lines[i].split()
        i += 1
        if not w:
            continue
        if w[0] == "F":
            last = int(w[1])
            if last == k:
                found = True
                break
            continue
        apply(exp, w)
    cands, ops = {}, []
    if found:
        cur = None
        while i < len(lines):
            w = lines[i].split()
            i += 1
            if not w:
                continue
            if w[0] == "F":
                break
            if cur is None:
                cur = bytearray(exp)
            off, n = apply(cur, w)
            ops.append(lines[i - 1])
            for s in range(off // 512, (off + n - 1) // 512 + 1):
                cands.setdefault(s, set()).add(bytes(cur[s * 512:s * 512 + 512]))
    data.close()
    return (exp if found else None), cands, ops, last


def qemu_img(*args):
    import subprocess
    return subprocess.run(["qemu-img"] + list(args), capture_output=True, text=True)


def header_bits(img):
    with open(img, "rb") as f:
        h = f.read(80)
    if len(h) < 80 or struct.unpack(">I", h[4:8])[0] < 3:
        return 0
    return struct.unpack(">Q", h[72:80])[0]


def cmd_crashcheck(a):
    import json
    import re
    import shutil
    import tempfile
    entry = os.environ.get("REPLAY_ENTRY", "?")
    # replay-log --torn: only the last S of a run of N writes applied
    torn = "/".join(os.environ.get("REPLAY_TORN", "").split()) or "-"
    mark = a.mark if a.mark is not None else os.environ.get("REPLAY_MARK", "")
    fails, notes = [], []
    leaks = corr = repaired = inflight = 0

    m = re.fullmatch(r"diffwork-(\d+)", mark)
    if m:
        k = int(m.group(1))
    elif mark in ("", "dm-log-writes-end"):
        k = 0 if not mark else None
    else:
        print("# entry %s: unexpected mark '%s'" % (entry, mark))
        return 1
    bits = header_bits(a.image)
    dirty = bool(bits & 1)
    if bits & 2:
        fails.append("the corrupt bit is set")
    if dirty and not a.lazy:
        fails.append("the dirty bit is set without lazy_refcounts")

    r = qemu_img("check", "--output=json", a.image)
    try:
        res = json.loads(r.stdout)
    except ValueError:
        res = {}
    corr = res.get("corruptions", 0)
    leaks = res.get("leaks", 0)
    if r.returncode not in (0, 2, 3) or res.get("check-errors", 0) or not res:
        fails.append("qemu-img check exit %d: %s" % (r.returncode, (r.stderr or r.stdout).strip()[:300]))
    elif corr:
        text = qemu_img("check", a.image).stdout
        if a.lazy and dirty:
            # lazy refcounts: refcounts may lag; a repair must fix them all
            tmp = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(a.image)))
            cp = os.path.join(tmp, "repair.qcow2")
            shutil.copyfile(a.image, cp)
            r1 = qemu_img("check", "-r", "all", cp)
            r2 = qemu_img("check", cp)
            shutil.rmtree(tmp)
            if r2.returncode != 0:
                fails.append("lazy_refcounts image with %d refcount error(s) not repaired by "
                             "check -r all (exit %d then %d):\n%s" %
                             (corr, r1.returncode, r2.returncode, r2.stdout.strip()[-600:]))
            else:
                repaired = corr
                notes.append("dirty: %d refcount error(s) repaired by check -r all" % corr)
        else:
            fails.append("qemu-img check: %d corruption(s)%s:\n%s" %
                         (corr, " (dirty bit set)" if dirty else "",
                          "\n".join(l for l in text.splitlines() if l.strip())[:1500]))

    # data: QEMU's view against the journal
    tmp = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(a.image)))
    try:
        out = os.path.join(tmp, "view.raw")
        r = qemu_img("convert", "-O", "raw", a.image, out)
        if r.returncode:
            fails.append("qemu-img convert failed: %s" % r.stderr.strip()[:300])
        else:
            if k is None:
                exp, cands, ops, last = crash_state(a.journal, 1 << 62)
                k = last
            exp, cands, ops, last = crash_state(a.journal, k)
            if exp is None:
                fails.append("flush %d is not in the journal" % k)
            else:
                with open(out, "rb") as f:
                    act = f.read(len(exp))
                if len(act) != len(exp):
                    fails.append("QEMU's view has %d bytes, expected %d" % (len(act), len(exp)))
                bad = []
                step = 1 << 20
                for c in range(0, min(len(act), len(exp)), step):
                    if act[c:c + step] == exp[c:c + step]:
                        continue
                    for o in range(c, min(c + step, len(exp)), 512):
                        x = act[o:o + 512]
                        if x == exp[o:o + 512]:
                            continue
                        if x in cands.get(o // 512, ()):
                            inflight += 1
                        else:
                            bad.append(o)
                if bad:
                    o = bad[0]
                    x = act[o:o + 512]
                    what = ("zeros" if not any(x) else
                            "the initial data" if x == open(os.path.join(a.journal, "initial"), "rb").read()[o:o + 512]
                            else "other data")
                    hit = [l for l in ops if int(l.split()[1]) <= o < int(l.split()[1]) + int(l.split()[2])]
                    fails.append("%d sector(s) differ from flush %d (and from the writes in flight "
                                 "after it); first at byte %d, which reads as %s; journal ops in "
                                 "flight there: %s" % (len(bad), k, o, what,
                                                       "; ".join(hit[-4:]) if hit else "none"))
        if a.snapshot:
            name, raw = a.snapshot.split("=", 1)
            sout = os.path.join(tmp, "snap.raw")
            r = qemu_img("convert", "-l", "snapshot.name=" + name, "-O", "raw", a.image, sout)
            if r.returncode:
                fails.append("snapshot %s: convert failed: %s" % (name, r.stderr.strip()[:300]))
            elif compare(sout, raw, Intervals()):
                fails.append("snapshot %s does not hold its data" % name)
    finally:
        shutil.rmtree(tmp)

    line = ("entry %s mark %s flush %s corruptions %d leaks %d dirty %d repaired %d "
            "inflight_sectors %d torn %s %s" % (entry, mark or "-", k, corr, leaks, int(dirty),
                                                repaired, inflight, torn,
                                                "FAIL" if fails else "ok"))
    if a.results:
        with open(a.results, "a") as f:
            f.write(line + "\n")
    if fails or leaks or notes:
        print("# crash point at entry %s%s (mark '%s', flush %s): %s" %
              (entry, "" if torn == "-" else ", torn: the last %s writes" % torn.replace("/", " of "),
               mark, k, "; ".join(notes + (["%d leaked cluster(s)" % leaks] if leaks else []))
               if not fails else "FAILED"))
    for f in fails:
        for l in f.splitlines():
            print("#   " + l)
    return 1 if fails else 0


def cmd_fill(a):
    rnd = random.Random(a.seed)
    size = a.size
    chunk = 64 * KIB
    with open(a.file, "wb") as f:
        off = 0
        while off < size:
            n = min(chunk, size - off)
            k = rnd.random()
            if a.holes and k < 0.15:
                f.seek(n, 1)
                off += n
                continue
            if a.compressible:
                if k < 0.5:
                    m = rnd.randrange(0, n)
                    data = rnd.randbytes(m) + bytes(n - m)
                else:
                    pat = rnd.randbytes(rnd.randrange(1, 200))
                    data = (pat * (n // len(pat) + 1))[:n]
            else:
                data = rnd.randbytes(n)
            f.write(data)
            off += n
        f.truncate(size)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--seed", type=int, required=True)
    r.add_argument("--dev", required=True)
    r.add_argument("--ref", required=True)
    r.add_argument("--ops", type=int, default=300)
    r.add_argument("--cluster", type=int, default=65536)
    r.add_argument("--max-io", type=int, default=256 * KIB)
    r.add_argument("--discard-undefined", action="store_true")
    r.add_argument("--no-discard", action="store_true")
    r.add_argument("--no-direct", action="store_true")
    r.add_argument("--mask-out")
    r.add_argument("--compare", action="store_true")
    r.add_argument("--log")
    r.add_argument("--weights")
    r.add_argument("--journal")
    r.add_argument("--mark-dev")
    k = sub.add_parser("crashcheck")
    k.add_argument("image")
    k.add_argument("--journal", required=True)
    k.add_argument("--results")
    k.add_argument("--lazy", action="store_true")
    k.add_argument("--snapshot")
    k.add_argument("--mark")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--mask")
    c.add_argument("--log")
    c.add_argument("--cluster", type=int, default=0)
    w = sub.add_parser("fswork")
    w.add_argument("dir")
    w.add_argument("--seed", type=int, required=True)
    w.add_argument("--files", type=int, default=300)
    w.add_argument("--sums")
    w.add_argument("--fstrim-at", type=float, default=0)
    f = sub.add_parser("fill")
    f.add_argument("file")
    f.add_argument("size", type=int)
    f.add_argument("--seed", type=int, required=True)
    f.add_argument("--compressible", action="store_true")
    f.add_argument("--holes", action="store_true")
    a = p.parse_args()
    return {"run": cmd_run, "compare": cmd_compare, "fswork": cmd_fswork,
            "fill": cmd_fill, "crashcheck": cmd_crashcheck}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
