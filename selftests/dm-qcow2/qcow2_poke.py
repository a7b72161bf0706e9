#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Inspect and damage qcow2 images for the dm-qcow2 selftests.

An independent (QEMU-free) parser of the qcow2 layout, used to find where
metadata lives, to poke bytes at documented offsets, and to check that the
image generators really produced the cluster types a test claims to cover.
All integers are big-endian on disk.  VALUE arguments accept 0x.. hex.

Subcommands (IMG is an image file; GOFF a guest byte offset):
  info IMG                       header fields, one "name=value" per line
  header-get IMG FIELD           print one header field (decimal)
  header-set IMG FIELD VALUE     overwrite one header field in place
  poke IMG OFFSET HEXBYTES       write raw bytes (e.g. "deadbeef") at OFFSET
  peek IMG OFFSET LEN            print LEN bytes at OFFSET as hex
  l1-get IMG IDX                 print L1 entry IDX (hex)
  l1-set IMG IDX VALUE           overwrite L1 entry IDX
  l2-addr IMG GOFF               file offset of the L2 entry mapping GOFF
  l2-get IMG GOFF                print the L2 entry (and bitmap with ext. L2)
  l2-set IMG GOFF VALUE [BITMAP] overwrite the L2 entry (and bitmap)
  l1-mod IMG IDX EXPR            L1[IDX] = EXPR, a python expression of the
                                 current entry e (e.g. "e + 512")
  l2-mod IMG GOFF EXPR [BMEXPR]  same for the L2 entry mapping GOFF (and
                                 the ext. L2 bitmap, variable bm); prints
                                 the old and new entries
  garble-compressed IMG GOFF [N] overwrite the first N (512) bytes of the
                                 compressed stream of GOFF's cluster with 0xff
  ext-list IMG                   header extensions: offset type len
  ext-set-len IMG TYPE LEN       set the length field of extension TYPE
  ext-add IMG TYPE HEXDATA       append an extension before the end marker
  ext-set-type IMG TYPE NEWTYPE  change the type of extension TYPE (e.g. to
                                 hide the backing format extension)
  snap-list IMG                  snapshot table: id name l1_offset l1_size
  stats IMG                      count cluster/subcluster types of the
                                 active L1 (normal, zero_plain, zero_alloc,
                                 compressed, compressed_straddle, ...)
  find IMG TYPE                  first guest offset whose cluster (all its
                                 subclusters) has TYPE (normal|compressed|
                                 compressed_straddle|zero_plain|zero_alloc|
                                 unallocated); prints -1 if none
  set-feature IMG incompat|compat|autoclear BIT [0|1]
"""

import signal
import struct
import sys

FIELDS = {
    # name: (offset, size)
    "magic": (0, 4),
    "version": (4, 4),
    "backing_file_offset": (8, 8),
    "backing_file_size": (16, 4),
    "cluster_bits": (20, 4),
    "size": (24, 8),
    "crypt_method": (32, 4),
    "l1_size": (36, 4),
    "l1_table_offset": (40, 8),
    "refcount_table_offset": (48, 8),
    "refcount_table_clusters": (56, 4),
    "nb_snapshots": (60, 4),
    "snapshots_offset": (64, 8),
    "incompatible_features": (72, 8),
    "compatible_features": (80, 8),
    "autoclear_features": (88, 8),
    "refcount_order": (96, 4),
    "header_length": (100, 4),
    "compression_type": (104, 1),
}
FMT = {1: ">B", 2: ">H", 4: ">I", 8: ">Q"}

OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1
OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2_STD_RESERVED = 0x3F000000000001FE


def die(msg):
    sys.stderr.write("qcow2_poke: %s\n" % msg)
    sys.exit(1)


def num(s):
    """Integer argument; negative values (from shell arithmetic on 64-bit
    entries with bit 63 set) are taken modulo 2^64."""
    return int(s, 0) & 0xFFFFFFFFFFFFFFFF


class Image:
    def __init__(self, path, write=False):
        self.path = path
        self.f = open(path, "r+b" if write else "rb")
        self.f.seek(0, 2)
        self.file_size = self.f.tell()
        self.h = self._read_header()

    def read(self, off, n):
        self.f.seek(off)
        b = self.f.read(n)
        return b + b"\0" * (n - len(b))          # past EOF reads as zeros

    def write(self, off, data):
        self.f.seek(off)
        self.f.write(data)

    def u(self, off, size):
        return struct.unpack(FMT[size], self.read(off, size))[0]

    def _read_header(self):
        h = {}
        for name, (off, size) in FIELDS.items():
            h[name] = self.u(off, size)
        if h["version"] < 3:
            for k in ("incompatible_features", "compatible_features",
                      "autoclear_features", "compression_type"):
                h[k] = 0
            h["refcount_order"] = 4
            h["header_length"] = 72
        elif h["header_length"] <= 104:
            h["compression_type"] = 0
        cb = h["cluster_bits"]
        if not 9 <= cb <= 21:
            # Damaged header: keep going with what can be derived safely.
            cb = min(max(cb, 9), 21)
        self.cb = cb
        self.cs = 1 << cb
        self.ext_l2 = bool(h["incompatible_features"] & (1 << 4))
        self.l2_esize = 16 if self.ext_l2 else 8
        self.l2_entries = self.cs // self.l2_esize
        return h

    # --- L1 / L2 -------------------------------------------------------
    def l1_addr(self, idx):
        return self.h["l1_table_offset"] + 8 * idx

    def l1_get(self, idx):
        return self.u(self.l1_addr(idx), 8)

    def l2_index(self, goff):
        ci = goff >> self.cb
        return ci // self.l2_entries, ci % self.l2_entries

    def l2_addr(self, goff):
        l1i, l2i = self.l2_index(goff)
        if l1i >= self.h["l1_size"]:
            die("guest offset %#x beyond l1_size" % goff)
        l2off = self.l1_get(l1i) & OFFSET_MASK
        if l2off == 0:
            die("guest offset %#x has no L2 table" % goff)
        return l2off + l2i * self.l2_esize

    def l2_get(self, goff):
        a = self.l2_addr(goff)
        e = self.u(a, 8)
        bm = self.u(a + 8, 8) if self.ext_l2 else None
        return e, bm

    def classify(self, e, bm):
        """List of subcluster types (1 entry without extended L2)."""
        if e & OFLAG_COMPRESSED:
            return ["compressed"]
        off = e & OFFSET_MASK
        if not self.ext_l2:
            if e & OFLAG_ZERO:
                return ["zero_alloc" if off else "zero_plain"]
            if off == 0:
                return ["unallocated"]
            return ["normal"]
        out = []
        for k in range(32):
            a = (bm >> k) & 1
            z = (bm >> (32 + k)) & 1
            if a and z:
                out.append("invalid")
            elif off == 0:
                out.append("invalid" if a else
                           ("zero_plain" if z else "unallocated"))
            elif z:
                out.append("zero_alloc")
            elif a:
                out.append("normal")
            else:
                out.append("unallocated_alloc")
        return out

    def compressed_range(self, e):
        x = 62 - (self.cb - 8)
        coff = e & ((1 << x) - 1)
        nsect = ((e >> x) & ((1 << (self.cb - 8)) - 1)) + 1
        csize = nsect * 512 - (coff & 511)
        return coff, csize

    def walk(self, l1_off=None, l1_size=None):
        """Yield (guest_off, entry, bitmap, n) for every L2 entry in range;
        a missing L2 table yields one (guest_off, 0, 0, n) for its n
        clusters."""
        l1_off = self.h["l1_table_offset"] if l1_off is None else l1_off
        l1_size = self.h["l1_size"] if l1_size is None else l1_size
        nclusters = (self.h["size"] + self.cs - 1) >> self.cb
        for l1i in range(l1_size):
            l2off = self.u(l1_off + 8 * l1i, 8) & OFFSET_MASK
            base = l1i * self.l2_entries
            if base >= nclusters:
                break
            n = min(self.l2_entries, nclusters - base)
            if l2off == 0:
                yield base << self.cb, 0, 0, n
                continue
            tab = self.read(l2off, self.cs)
            for i in range(n):
                e = struct.unpack_from(">Q", tab, i * self.l2_esize)[0]
                bm = (struct.unpack_from(">Q", tab, i * self.l2_esize + 8)[0]
                      if self.ext_l2 else 0)
                yield (base + i) << self.cb, e, bm, 1

    # --- header extensions --------------------------------------------
    def extensions(self):
        off = self.h["header_length"]
        end = self.h["backing_file_offset"] or self.cs
        out = []
        while off + 8 <= end:
            t, ln = struct.unpack(">II", self.read(off, 8))
            out.append((off, t, ln))
            if t == 0:
                break
            off += 8 + ((ln + 7) & ~7)
        return out

    # --- snapshots -------------------------------------------------------
    def snapshots(self):
        off = self.h["snapshots_offset"]
        out = []
        for _ in range(self.h["nb_snapshots"]):
            (l1o, l1s, idl, nml, _ds, _dn, _vc, _vs,
             extra) = struct.unpack(">QIHHIIQII", self.read(off, 40))
            p = off + 40 + extra
            sid = self.read(p, idl).decode(errors="replace")
            name = self.read(p + idl, nml).decode(errors="replace")
            out.append((sid, name, l1o, l1s, off))
            off = (p + idl + nml + 7) & ~7
        return out


def cmd_info(a):
    img = Image(a[0])
    for k, v in img.h.items():
        print("%s=%d" % (k, v))
    print("file_size=%d" % img.file_size)


def field(name):
    if name not in FIELDS:
        die("unknown field %s (known: %s)" % (name, " ".join(FIELDS)))
    return FIELDS[name]


def cmd_header_get(a):
    off, size = field(a[1])
    print(Image(a[0]).u(off, size))


def cmd_header_set(a):
    off, size = field(a[1])
    v = num(a[2])
    img = Image(a[0], write=True)
    img.write(off, struct.pack(FMT[size], v & ((1 << (8 * size)) - 1)))


def cmd_poke(a):
    Image(a[0], write=True).write(num(a[1]), bytes.fromhex(a[2]))


def cmd_peek(a):
    print(Image(a[0]).read(num(a[1]), num(a[2])).hex())


def cmd_l1_get(a):
    print("%#018x" % Image(a[0]).l1_get(num(a[1])))


def cmd_l1_set(a):
    img = Image(a[0], write=True)
    img.write(img.l1_addr(num(a[1])), struct.pack(">Q", num(a[2])))


def cmd_l2_addr(a):
    print(Image(a[0]).l2_addr(num(a[1])))


def cmd_l2_get(a):
    e, bm = Image(a[0]).l2_get(num(a[1]))
    print("%#018x" % e + ("" if bm is None else " %#018x" % bm))


def cmd_l2_set(a):
    img = Image(a[0], write=True)
    addr = img.l2_addr(num(a[1]))
    img.write(addr, struct.pack(">Q", num(a[2])))
    if len(a) > 3:
        if not img.ext_l2:
            die("bitmap given for an image without extended L2")
        img.write(addr + 8, struct.pack(">Q", num(a[3])))


def _expr(expr, **kw):
    return eval(expr, {"__builtins__": {}}, kw) & 0xFFFFFFFFFFFFFFFF


def cmd_l1_mod(a):
    img = Image(a[0], write=True)
    idx = num(a[1])
    e = img.l1_get(idx)
    new = _expr(a[2], e=e)
    img.write(img.l1_addr(idx), struct.pack(">Q", new))
    print("%#018x -> %#018x" % (e, new))


def cmd_l2_mod(a):
    img = Image(a[0], write=True)
    addr = img.l2_addr(num(a[1]))
    e = img.u(addr, 8)
    bm = img.u(addr + 8, 8) if img.ext_l2 else 0
    new = _expr(a[2], e=e, bm=bm)
    img.write(addr, struct.pack(">Q", new))
    if len(a) > 3:
        if not img.ext_l2:
            die("bitmap given for an image without extended L2")
        img.write(addr + 8, struct.pack(">Q", _expr(a[3], e=e, bm=bm)))
    print("%#018x -> %#018x" % (e, new))


def cmd_garble_compressed(a):
    img = Image(a[0], write=True)
    e, _ = img.l2_get(num(a[1]))
    if not e & OFLAG_COMPRESSED:
        die("cluster at %s is not compressed (%#x)" % (a[1], e))
    coff, csize = img.compressed_range(e)
    n = min(num(a[2]) if len(a) > 2 else 512, csize)
    img.write(coff, b"\xff" * n)


def cmd_ext_list(a):
    for off, t, ln in Image(a[0]).extensions():
        print("%d %#010x %d" % (off, t, ln))


def cmd_ext_set_len(a):
    img = Image(a[0], write=True)
    t = num(a[1])
    for off, et, _ in img.extensions():
        if et == t:
            img.write(off + 4, struct.pack(">I", num(a[2])))
            return
    die("extension %#x not found" % t)


def cmd_ext_set_type(a):
    img = Image(a[0], write=True)
    t = num(a[1])
    for off, et, _ in img.extensions():
        if et == t:
            img.write(off, struct.pack(">I", num(a[2])))
            return
    die("extension %#x not found" % t)


def cmd_ext_add(a):
    img = Image(a[0], write=True)
    exts = img.extensions()
    if not exts or exts[-1][1] != 0:
        die("no end marker found")
    off = exts[-1][0]
    data = bytes.fromhex(a[2])
    blob = struct.pack(">II", num(a[1]), len(data)) + data
    blob += b"\0" * ((-len(blob)) % 8) + b"\0" * 8      # new end marker
    end = img.h["backing_file_offset"] or img.cs
    if off + len(blob) > end:
        die("no room for the extension")
    img.write(off, blob)


def cmd_snap_list(a):
    for sid, name, l1o, l1s, _ in Image(a[0]).snapshots():
        print("%s %s %#x %d" % (sid, name, l1o, l1s))


def cmd_stats(a):
    img = Image(a[0])
    counts = {}

    def inc(k, n=1):
        counts[k] = counts.get(k, 0) + n

    for _goff, e, bm, n in img.walk():
        types = img.classify(e, bm)
        for t in types:
            inc(t, n)
        if len(set(types)) > 1:
            inc("mixed_cluster")
        if types == ["compressed"]:
            coff, csize = img.compressed_range(e)
            if (coff >> img.cb) != ((coff + csize - 1) >> img.cb):
                inc("compressed_straddle")
        if e & OFFSET_MASK and not e & OFLAG_COMPRESSED and \
                (e & OFFSET_MASK) >= img.file_size:
            inc("beyond_eof")
    for k in sorted(counts):
        print("%s=%d" % (k, counts[k]))


def cmd_find(a):
    img = Image(a[0])
    want = a[1]
    for goff, e, bm, _n in img.walk():
        types = img.classify(e, bm)
        if want == "compressed_straddle":
            if types == ["compressed"]:
                coff, csize = img.compressed_range(e)
                if (coff >> img.cb) != ((coff + csize - 1) >> img.cb):
                    print(goff)
                    return
            continue
        if all(t == want for t in types):
            print(goff)
            return
    print(-1)


def cmd_set_feature(a):
    img = Image(a[0], write=True)
    off = {"incompat": 72, "compat": 80, "autoclear": 88}[a[1]]
    bit = num(a[2])
    on = num(a[3]) if len(a) > 3 else 1
    v = img.u(off, 8)
    v = (v | (1 << bit)) if on else (v & ~(1 << bit))
    img.write(off, struct.pack(">Q", v))


CMDS = {
    "info": (cmd_info, 1),
    "header-get": (cmd_header_get, 2),
    "header-set": (cmd_header_set, 3),
    "poke": (cmd_poke, 3),
    "peek": (cmd_peek, 3),
    "l1-get": (cmd_l1_get, 2),
    "l1-set": (cmd_l1_set, 3),
    "l2-addr": (cmd_l2_addr, 2),
    "l2-get": (cmd_l2_get, 2),
    "l2-set": (cmd_l2_set, 3),
    "l1-mod": (cmd_l1_mod, 3),
    "l2-mod": (cmd_l2_mod, 3),
    "garble-compressed": (cmd_garble_compressed, 2),
    "ext-list": (cmd_ext_list, 1),
    "ext-set-len": (cmd_ext_set_len, 3),
    "ext-add": (cmd_ext_add, 3),
    "ext-set-type": (cmd_ext_set_type, 3),
    "snap-list": (cmd_snap_list, 1),
    "stats": (cmd_stats, 1),
    "find": (cmd_find, 2),
    "set-feature": (cmd_set_feature, 3),
}


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if len(sys.argv) < 2 or sys.argv[1] not in CMDS:
        sys.stderr.write(__doc__)
        sys.exit(2)
    fn, nargs = CMDS[sys.argv[1]]
    args = sys.argv[2:]
    if len(args) < nargs:
        die("%s needs %d arguments" % (sys.argv[1], nargs))
    fn(args)


if __name__ == "__main__":
    main()
