#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0
"""Build (or tear down) a chain of empty qcow2 overlays for the benchmark.

  bench-chain.py build DIR TEMPLATE BOTTOM N
      TEMPLATE is an empty qcow2 overlay made by `qemu-img create -b BOTTOM
      -F qcow2`.  Writes N overlay files DIR/l1.qcow2 .. DIR/lN.qcow2 (copies
      of TEMPLATE whose backing file name is patched to the loop device of
      the layer below: l1 -> BOTTOM, l2 -> loop of l1, ...) and attaches each
      to a read-only loop device.  Prints the loop devices, top first.
  bench-chain.py detach LOOPDEV...
      Detaches the loop devices.

Under TCG every exec costs ~0.1-0.5 s, so 255 `qemu-img create` and
`losetup` runs would take minutes; this does the same in one process.
The files are byte copies of a qemu-img-made image, only the backing file
name (header fields backing_file_offset/backing_file_size) differs.
"""
import fcntl
import os
import struct
import sys
import time

LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_CTL_GET_FREE = 0x4C82


def patch(template, name):
    img = bytearray(template)
    if img[:4] != b"QFI\xfb":
        sys.exit("bench-chain: template is not a qcow2 image")
    off, size = struct.unpack_from(">QI", img, 8)
    cluster_bits = struct.unpack_from(">I", img, 20)[0]
    enc = name.encode()
    if not off or off + max(size, len(enc)) > (1 << cluster_bits):
        sys.exit("bench-chain: no room for the backing file name in cluster 0")
    img[off:off + size] = bytes(size)
    img[off:off + len(enc)] = enc
    struct.pack_into(">I", img, 16, len(enc))
    return bytes(img)


def attach(path):
    ctl = os.open("/dev/loop-control", os.O_RDWR)
    try:
        n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
    finally:
        os.close(ctl)
    dev = "/dev/loop%d" % n
    for _ in range(100):		# devtmpfs node; normally there at once
        if os.path.exists(dev):
            break
        time.sleep(0.05)
    fd = os.open(path, os.O_RDONLY)
    lfd = os.open(dev, os.O_RDONLY)
    try:
        fcntl.ioctl(lfd, LOOP_SET_FD, fd)
    finally:
        os.close(lfd)
        os.close(fd)
    return dev


def build(d, template_path, bottom, n):
    with open(template_path, "rb") as f:
        template = f.read()
    below = bottom
    devs = []
    for k in range(1, n + 1):
        path = os.path.join(d, "l%d.qcow2" % k)
        with open(path, "wb") as f:
            f.write(patch(template, below))
        below = attach(path)
        devs.append(below)
    print(" ".join(reversed(devs)))


def detach(devs):
    rc = 0
    for dev in devs:
        try:
            fd = os.open(dev, os.O_RDONLY)
            try:
                fcntl.ioctl(fd, LOOP_CLR_FD)
            finally:
                os.close(fd)
        except OSError as e:
            print("bench-chain: detach %s: %s" % (dev, e), file=sys.stderr)
            rc = 1
    return rc


def main():
    if len(sys.argv) == 6 and sys.argv[1] == "build":
        build(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return 0
    if len(sys.argv) >= 2 and sys.argv[1] == "detach":
        return detach(sys.argv[2:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
