#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# version.sh: print the dm-qcow2 version, the target version of
# drivers/md/dm-qcow2/dm-qcow2-target.c (".version = {1, 1, 0}" -> 1.1.0).
# dkms.conf and the Debian packages carry it.
set -eu

top=$(cd "$(dirname "$0")/../.." && pwd)
v=$(sed -n 's/^[[:space:]]*\.version[[:space:]]*=[[:space:]]*{[[:space:]]*\([0-9]*\),[[:space:]]*\([0-9]*\),[[:space:]]*\([0-9]*\)[[:space:]]*}.*/\1.\2.\3/p' \
	"$top/drivers/md/dm-qcow2/dm-qcow2-target.c")
if [ -z "$v" ] || [ "$(echo "$v" | wc -l)" != 1 ]; then
	echo "version.sh: cannot find the target version in dm-qcow2-target.c" >&2
	exit 1
fi
echo "$v"
