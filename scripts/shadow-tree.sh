#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# shadow-tree.sh SRCDIR BUILDDIR KDIR
#
# Kbuild writes objects next to the sources of an external module, so builds
# for two kernels would collide.  Mirror the module sources into BUILDDIR as
# symlinks (objects then land in BUILDDIR) and generate the compat probe
# header for KDIR there, once per kernel build tree.
set -eu

src=$1
build=$2
kdir=$3

mkdir -p "$build"
(cd "$src" && find Kbuild drivers include -type f \( -name '*.[ch]' -o -name Kbuild \) \
	-not -path '*/probes/*') | while read -r f; do
	mkdir -p "$build/$(dirname "$f")"
	ln -sfn "$src/$f" "$build/$f"
done
# Drop links to sources that no longer exist.
find "$build" -xtype l -delete

probes="$build/compat-probes.h"
stamp=$(cat "$src"/drivers/md/dm-qcow2/probes/*.c "$src/scripts/compat-probe.sh" | md5sum | cut -c1-16)
if ! grep -q "stamp $stamp" "$probes" 2>/dev/null; then
	"$src/scripts/compat-probe.sh" "$kdir" "$probes"
	echo "/* stamp $stamp */" >>"$probes"
fi
