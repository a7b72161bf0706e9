#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Guest half of demo.sh (runs as root inside the test VM).
set -eu

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { echo "\$ $*"; "$@"; }

cd "$(mktemp -d /tmp/demo.XXXXXX)"
modprobe loop

step "Make a base image holding an ext4 file system with some files"
mkdir files
for i in $(seq 1 20); do head -c $((i * 4096)) /dev/urandom >"files/file$i"; done
(cd files && sha256sum ./* >../SHA256SUMS)
run mkfs.ext4 -q -d files -L demo fs.raw 64M
run qemu-img convert -O qcow2 fs.raw base.qcow2

step "An overlay over it, with a few guest writes made by QEMU"
run qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 overlay.qcow2
run qemu-io -f qcow2 -c 'write -P 0x5a 60M 1M' overlay.qcow2
run qemu-img info overlay.qcow2

step "Map the chain through the kernel: the overlay writable, its base read-only"
truncate -s 128M overlay.qcow2		# room to grow inside the loop device
truncate -s %512 base.qcow2
ov=$(losetup --find --show overlay.qcow2)
base=$(losetup --find --show --read-only base.qcow2)
sectors=$(( $(qemu-img info --output=json overlay.qcow2 |
	sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p') / 512 ))
table="0 $sectors qcow2 $ov 3 backing qcow2 $base"
echo "table: $table"
run dmsetup create demo --table "$table"
udevadm settle

step "Mount it, check every file, write new ones"
mkdir mnt
run mount /dev/mapper/demo mnt
(cd mnt && sha256sum -c --quiet ../SHA256SUMS) && echo "all $(wc -l <SHA256SUMS) files match"
mkdir mnt/new
for i in $(seq 1 20); do head -c $((i * 8192)) /dev/urandom >"mnt/new/file$i"; done
rm mnt/file1 mnt/file2
(cd mnt && sha256sum new/* >../NEWSUMS)
run df -h mnt
umount mnt

step "What the target reports"
run dmsetup table demo
run dmsetup status demo
echo "(fields: mode virtual_size cluster_size layers cache_used/slots hits misses"
echo " metadata_reads open_reads io_errors dirty_slices)"
run dmsetup remove demo
losetup -d "$ov" "$base"

step "QEMU's view of the result: consistent, and holding the new files"
run qemu-img check overlay.qcow2
run qemu-img info overlay.qcow2
qemu-img convert -O raw overlay.qcow2 result.raw
mount -o ro,loop result.raw mnt
(cd mnt && sha256sum -c --quiet ../NEWSUMS) &&
	echo "all $(wc -l <NEWSUMS) new files read back through QEMU"
umount mnt
