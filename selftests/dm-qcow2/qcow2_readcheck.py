#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Read-check a device (or file) against a reference file in one process.

Usage: qcow2_readcheck.py DEV REF CLUSTER_SIZE [SEED] [--no-whole]

Runs the read battery of the dm-qcow2 read tests: buffered reads at
unaligned, cluster-straddling and tail ranges (the device's page cache is
dropped with BLKFLSBUF before each, so every read reaches the target),
O_DIRECT reads at 4 KiB-aligned ranges (and 512-byte-aligned ones when the
logical block size allows), a few seeded random ranges, and finally a
sequential comparison of the whole device (after another cache drop) with a
size check.  Each mismatch is printed as a "# ..." diagnostic; the exit
status is 1 if anything failed.

Under TCG every fork/exec costs a lot, so this replaces dozens of dd/cmp
processes per image; selftests/dm-qcow2/qcow2_common.sh keeps the dd-based
_read_at/_read_direct for single targeted reads.
"""

import fcntl
import mmap
import os
import random
import stat
import struct
import sys

BLKFLSBUF = 0x1261
BLKSSZGET = 0x1268
BLKGETSIZE64 = 0x80081272

fails = 0


def diag(msg):
    print("# " + msg)


def fail(msg):
    global fails
    fails += 1
    diag(msg)


def is_blk(path):
    return stat.S_ISBLK(os.stat(path).st_mode)


def dev_size(fd, blk):
    if blk:
        buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
        return struct.unpack("Q", buf)[0]
    return os.fstat(fd).st_size


def drop_cache(fd, blk):
    if blk:
        try:
            fcntl.ioctl(fd, BLKFLSBUF, 0)
            return
        except OSError:
            pass
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def pread_full(fd, off, length):
    """Read up to length bytes (short only at EOF); None on an I/O error."""
    out = bytearray()
    while len(out) < length:
        try:
            b = os.pread(fd, min(length - len(out), 1 << 20), off + len(out))
        except OSError as e:
            fail("read %d+%d failed at %d: %s" % (off, length, off + len(out), e))
            return None
        if not b:
            break
        out += b
    return bytes(out)


def first_diff(a, b):
    n = min(len(a), len(b))
    for i in range(0, n, 4096):
        if a[i:i + 4096] != b[i:i + 4096]:
            for j in range(i, min(i + 4096, n)):
                if a[j] != b[j]:
                    return j
    return n


def check(kind, got, exp, off, length):
    if got is None or exp is None or got == exp:
        return
    if len(got) != len(exp):
        fail("%s read %d+%d: got %d bytes, reference %d" %
             (kind, off, length, len(got), len(exp)))
        return
    d = first_diff(got, exp)
    fail("%s read %d+%d differs at byte %d (device %#x: %02x, reference %02x)" %
         (kind, off, length, off + d, off + d, got[d], exp[d]))


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    whole = "--no-whole" not in sys.argv
    if len(args) < 3:
        sys.stderr.write(__doc__)
        sys.exit(2)
    dev, ref, c = args[0], args[1], int(args[2], 0)
    seed = int(args[3]) if len(args) > 3 else 1
    blk = is_blk(dev)

    fd = os.open(dev, os.O_RDONLY)
    rfd = os.open(ref, os.O_RDONLY)
    size = dev_size(fd, blk)
    rsize = os.fstat(rfd).st_size
    if size != rsize:
        fail("size mismatch: %s is %d bytes, reference %d" % (dev, size, rsize))
        size = min(size, rsize)
    lbs = 512
    if blk:
        lbs = struct.unpack("i", fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4))[0]

    h = min(700, c // 2 - 50)
    buffered = [(0, 1), (1, 511), (511, 2), (c - 1, 2), (c - h, 2 * h),
                (c + 333, 2 * c + 1000), (3 * c - 5, c + 10),
                (size // 2 - 4097, 8195), (size - 1, 1),
                (size - c - 3, c + 3), (size - 4096, 4096)]
    direct = [(0, 4096), ((c // 4096) * 4096, 8192), (size - 8192, 8192),
              ((size // 3) & ~4095, 65536)]
    if lbs == 512:
        direct += [(max(c - 512, 512), 1024), (512, 512),
                   ((5 * c + 1536) & ~511, 2560)]
    r = random.Random(seed)
    for _ in range(6):
        off = r.randrange(size)
        buffered.append((off, 1 + r.randrange(2 * c + 4096)))
    for _ in range(2):
        off = r.randrange(size // 4096) * 4096
        direct.append((off, 4096 * (1 + r.randrange(2 * c // 4096 + 1))))

    for off, length in buffered:
        if off < 0 or length <= 0 or off >= size:
            continue
        length = min(length, size - off)
        drop_cache(fd, blk)
        check("buffered", pread_full(fd, off, length),
              pread_full(rfd, off, length), off, length)

    try:
        dfd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
    except OSError as e:
        dfd = None
        diag("no O_DIRECT on %s (%s): direct reads skipped" % (dev, e))
    if dfd is not None:
        for off, length in direct:
            if off < 0 or off + length > size or off % lbs or length % lbs:
                continue
            buf = mmap.mmap(-1, length)
            try:
                n = os.preadv(dfd, [buf], off)
                got = bytes(buf[:n])
            except OSError as e:
                fail("direct read %d+%d failed: %s" % (off, length, e))
                continue
            check("direct", got, pread_full(rfd, off, length), off, length)
        os.close(dfd)

    if whole:
        drop_cache(fd, blk)
        off, chunk = 0, 1 << 20
        while off < size:
            n = min(chunk, size - off)
            got = pread_full(fd, off, n)
            exp = pread_full(rfd, off, n)
            if got is None:
                break
            if got != exp:
                check("whole-device", got, exp, off, n)
                break
            off += n
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
