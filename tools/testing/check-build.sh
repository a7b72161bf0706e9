#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# check-build.sh KVER...
#
# Build dm-qcow2.ko for each kernel with W=1 and sparse (C=2: check every
# file), and fail on any compiler or sparse warning from our sources.
# Prints TAP; the last line is "check-build: N passed, N failed".
set -u

top=$(cd "$(dirname "$0")/../.." && pwd)
pass=0
fail=0
n=0

echo "TAP version 13"
echo "1..$(($# + 1))"
for kver in "$@"; do
	n=$((n + 1))
	log=$(mktemp)
	if make -C "$top" -s KVER="$kver" W=1 C=2 modules >"$log" 2>&1 &&
	   ! grep -E "(warning|error):" "$log" | grep -q "$top/build/"; then
		echo "ok $n - build $kver (W=1, sparse): no warnings"
		pass=$((pass + 1))
	else
		echo "not ok $n - build $kver (W=1, sparse)"
		sed 's/^/# /' "$log" | grep -v "Skipping BTF" | tail -n 40
		fail=$((fail + 1))
	fi
	rm -f "$log"
done
# checkpatch over the kernel sources and the shared format headers.  The
# userspace shim in qcow2-types.h defines __packed itself, hence the ignore.
n=$((n + 1))
log=$(mktemp)
if cp=$("$top/tools/testing/get-checkpatch.sh") &&
   (cd "$top" && perl "$cp" --no-tree --terse --show-types \
	--ignore PREFER_DEFINED_ATTRIBUTE_MACRO,SPDX_LICENSE_TAG \
	-f drivers/md/dm-qcow2/*.[ch] drivers/md/dm-qcow2/probes/*.c include/qcow2/*.h) >"$log" 2>&1 &&
   ! grep -qE "(ERROR|WARNING|CHECK):" "$log"; then
	echo "ok $n - checkpatch: clean"
	pass=$((pass + 1))
else
	echo "not ok $n - checkpatch"
	grep -E "(ERROR|WARNING|CHECK):" "$log" | sed 's/^/# /' | head -n 40
	fail=$((fail + 1))
fi
rm -f "$log"

echo "check-build: $pass passed, $fail failed"
[ "$fail" = 0 ]
