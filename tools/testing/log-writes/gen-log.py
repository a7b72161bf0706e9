#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Write a synthetic dm-log-writes log, and the device states it implies.

  gen-log.py LOG DIR --seed S [--size BYTES] [--sectorsize N] [--entries N]

LOG gets a log in the format of the kernel's log-writes target: a superblock
(magic, version 1, nr_entries, sectorsize) and entries of one header block
(sector, nr_sectors, flags, data_len; little endian) followed by the data of
a write.  The entries are a seeded mix of plain writes, writes with the
METADATA flag, FUA writes, empty FLUSH entries, FLUSH writes with data,
discards and marks (named m1, m2, ...).  After the counted entries a few
well-formed but uncounted entries are appended (a reader must stop at
nr_entries).

DIR gets what a correct replay gives:
  initial          the device before the log (seeded random content)
  after.I          the device after entries 0..I (discards read as zeros)
  final.nodiscard  the device after all entries with discards skipped
  points           entry numbers with FLUSH or FUA, one a line
  marks            "I NAME" for every mark
  lastmark.I       for every entry: "M NAME" of the last mark at or before
                   it, or "-1 " if none
  runs             "F A" for every FLUSH entry F right after two or more
                   plain writes (entries A..F-1: no FLUSH, FUA, DISCARD or
                   MARK flag), one a line: where replay-log --torn checks
"""

import argparse
import os
import random
import struct

MAGIC = 0x6a736677736872
FLUSH, FUA, DISCARD, MARK, META = 1, 2, 4, 8, 16


def main():
    p = argparse.ArgumentParser()
    p.add_argument("log")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--size", type=int, default=256 * 1024)
    p.add_argument("--sectorsize", type=int, default=512)
    p.add_argument("--entries", type=int, default=60)
    a = p.parse_args()

    rnd = random.Random(a.seed)
    ss = a.sectorsize
    nsec = a.size // ss
    dev = bytearray(rnd.randbytes(nsec * ss))
    nodisc = bytearray(dev)
    os.makedirs(a.dir, exist_ok=True)
    with open(os.path.join(a.dir, "initial"), "wb") as f:
        f.write(dev)

    entries = []            # (sector, nr, flags, data)
    nmarks = 0
    for i in range(a.entries):
        k = rnd.random()
        nr = rnd.randrange(1, min(64, nsec) + 1)
        sec = rnd.randrange(0, nsec - nr + 1)
        if i == a.entries // 2:
            k = 0.95            # at least one mark in the middle
        if k < 0.40:
            flags = META if rnd.random() < 0.2 else 0
            entries.append((sec, nr, flags, rnd.randbytes(nr * ss)))
        elif k < 0.50:
            entries.append((sec, nr, FUA, rnd.randbytes(nr * ss)))
        elif k < 0.60:
            entries.append((0, 0, FLUSH, b""))
        elif k < 0.67:
            entries.append((sec, nr, FLUSH | FUA, rnd.randbytes(nr * ss)))
        elif k < 0.80:
            entries.append((sec, nr, DISCARD, b""))
        elif k < 0.87:
            entries.append((0, 0, FLUSH | FUA, b""))
        else:
            nmarks += 1
            name = "m%d" % nmarks
            if nmarks == 2:
                name += "-" + "x" * 40      # a longer name
            entries.append((0, 0, MARK, name.encode()))

    def header(sec, nr, flags, data):
        dl = len(data) if flags & MARK else 0
        h = struct.pack("<QQQQ", sec, nr, flags, dl)
        if flags & MARK:
            h += data + b"\0"
        return h + bytes(ss - len(h))

    with open(a.log, "wb") as f:
        f.write(struct.pack("<QQQI", MAGIC, 1, len(entries), ss))
        f.write(bytes(ss - 28))
        for sec, nr, flags, data in entries:
            f.write(header(sec, nr, flags, data))
            if not flags & (MARK | DISCARD):
                f.write(data)
        # uncounted: must be ignored
        for _ in range(3):
            f.write(header(0, 4, 0, b""))
            f.write(b"\xee" * 4 * ss)

    last = (-1, "")
    points, marks, runs = [], [], []
    first = None            # first plain write of the current run
    for i, (sec, nr, flags, data) in enumerate(entries):
        if flags & MARK:
            last = (i, data.decode())
            marks.append("%d %s" % last)
        elif flags & DISCARD:
            dev[sec * ss:(sec + nr) * ss] = bytes(nr * ss)
        elif nr:
            dev[sec * ss:(sec + nr) * ss] = data
            nodisc[sec * ss:(sec + nr) * ss] = data
        if flags & (FLUSH | FUA):
            points.append(str(i))
        if flags & FLUSH and first is not None and i - first >= 2:
            runs.append("%d %d" % (i, first))
        if nr and not flags & (FLUSH | FUA | DISCARD | MARK):
            first = i if first is None else first
        else:
            first = None
        with open(os.path.join(a.dir, "after.%d" % i), "wb") as f:
            f.write(dev)
        with open(os.path.join(a.dir, "lastmark.%d" % i), "w") as f:
            f.write("%d %s\n" % last)
    with open(os.path.join(a.dir, "final.nodiscard"), "wb") as f:
        f.write(nodisc)
    with open(os.path.join(a.dir, "points"), "w") as f:
        f.write("".join(x + "\n" for x in points))
    with open(os.path.join(a.dir, "marks"), "w") as f:
        f.write("".join(x + "\n" for x in marks))
    with open(os.path.join(a.dir, "runs"), "w") as f:
        f.write("".join(x + "\n" for x in runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
