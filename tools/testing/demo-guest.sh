#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Guest half of demo.sh (runs as root inside the test VM): qcow2 images
# opened and closed with qcow2setup (built on the host by demo.sh).
set -eu

top=$(cd "$(dirname "$0")/../.." && pwd)
PATH=$top/tools/qcow2setup:$PATH

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { echo "\$ $*"; "$@"; }

cd "$(mktemp -d /tmp/demo.XXXXXX)"

step "A new 64 MiB qcow2 image: open it, make an ext4 file system, write files"
run qemu-img create -q -f qcow2 base.qcow2 64M
ls -ls base.qcow2
run qcow2setup open base.qcow2 demo
mkdir mnt files
run mkfs.ext4 -q -L demo /dev/mapper/demo
run mount /dev/mapper/demo mnt
for i in $(seq 1 20); do head -c $((i * 4096)) /dev/urandom >"mnt/file$i"; done
(cd mnt && sha256sum ./file* >../SHA256SUMS)
umount mnt
run qcow2setup close demo
run qemu-img check base.qcow2
sha256sum base.qcow2 >base.sum

step "An overlay with base.qcow2 as its backing file"
run qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 overlay.qcow2
run qcow2setup info overlay.qcow2

step "Open the chain: the overlay writable, its base read-only"
run qcow2setup open overlay.qcow2 demo
echo "\$ ls -ls overlay.qcow2   # extended sparsely: room to grow in the loop device"
ls -ls overlay.qcow2
run dmsetup table demo
run qcow2setup list
echo "\$ qemu-img info base.qcow2"
qemu-img info base.qcow2 2>&1 | head -3 || true
echo "\$ qemu-io -c 'write 0 512' base.qcow2   # the base is locked as QEMU locks it"
qemu-io -f qcow2 -c 'write 0 512' base.qcow2 2>&1 | head -2 || true

step "Mount it, check every file, write new ones"
run mount /dev/mapper/demo mnt
(cd mnt && sha256sum -c --quiet ../SHA256SUMS) && echo "all $(wc -l <SHA256SUMS) files match"
mkdir mnt/new
for i in $(seq 1 20); do head -c $((i * 8192)) /dev/urandom >"mnt/new/file$i"; done
rm mnt/file1 mnt/file2
(cd mnt && sha256sum new/* >../NEWSUMS)
run df -h mnt
umount mnt
run qcow2setup status demo
run qcow2setup close demo
echo "\$ ls -ls overlay.qcow2   # cut back to the end of the data at close"
ls -ls overlay.qcow2

step "QEMU's view of the result: consistent, and holding the new files"
run qemu-img check overlay.qcow2
run qemu-img info overlay.qcow2
sha256sum -c --quiet base.sum && echo "base.qcow2 is unchanged"
qemu-img convert -O raw overlay.qcow2 result.raw
mount -o ro,loop result.raw mnt
(cd mnt && sha256sum -c --quiet ../NEWSUMS) &&
	echo "all $(wc -l <NEWSUMS) new files read back through QEMU"
umount mnt
