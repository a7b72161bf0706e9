#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_write_grow.sh - the refcount table grows while a commit writes the
# copy of a new refcount block.
#
# A commit takes copies of the dirty refcount slices and writes them while
# updates go on.  When an update then has to grow the refcount table
# (qcow2_grow_reftable()), the new table points to every refcount block the
# target knows of, the new one among them, and the header switches to it:
# if that happened before the block's copy is on the disk, a crash in between
# would leave a table pointing to a block of zeros (refcount 0 for the block
# itself and for every cluster it counts: `qemu-img check` reports
# corruption).  So the grow waits for the copies first.
#
# The image (8 MiB, 512-byte clusters, 64-bit refcounts: a refcount block
# counts 64 clusters, 32 KiB of the image, and the first refcount table
# cluster 64 blocks, 2 MiB) is a file on a loop device; QEMU writes data
# until the image ends in the next-to-last range that table covers.  The
# target maps it through a device that delays writes to one sector by 3 s:
# the first cluster of the last range, where the target places that range's
# refcount block B when it first needs it.  Then:
#   1. a write that allocates past the end of the next-to-last range: the
#      target creates B (its zeroing takes the 3 s);
#   2. a flush from a thread: its commit writes B's first copy (3 s);
#   3. one second later, a 64 KiB write that allocates past the last range:
#      the table must grow; meanwhile the header is polled on the loop
#      device, and when it names the new table, B must hold its refcounts
#      (its first entry, B's own count, is 1), not zeros;
#   4. the writes and flushes complete, the device is removed, `qemu-img
#      check` exits 0 and QEMU reads the data of 1. and 3. as written.
# If the header had not changed within 30 s nothing would be tested: the
# test fails.

. "$(dirname "$0")/test_common.sh"
. "$(dirname "$0")/qcow2_common.sh"
. "$(dirname "$0")/qcow2_write_common.sh"

_qcow2_init python3
_gen_only && _skip "GEN_ONLY: this test has no image-only part"
_have_dm_target delay || _skip "no dm-delay target in this kernel"
K=1024
P=${QCOW2_DM_PREFIX}grow
IMG=$WORK/grow.qcow2
RANGE=$((32 * K))	# bytes of the image one refcount block counts

ktap_header
ktap_plan 3

# --- image --------------------------------------------------------------------
rc=0
qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 "$IMG" 8M || rc=1
# ranges the first table covers: 64 entries per cluster of it
entries=$(($(_get_be "$IMG" 56 4) * 64))
last=$((entries - 1))
# QEMU's data until the image ends in range last - 1 (an estimate first)
off=$((1904 * K))
[ $rc -eq 0 ] && _qio "$IMG" "write -q -P 0x11 0 $off" || rc=1
end=0
while [ $rc -eq 0 ]; do
	end=$(_wimg_end "$IMG") || { rc=1; break; }
	[ "$end" -ge $(((last - 1) * RANGE)) ] && break
	_qio "$IMG" "write -q -P 0x11 $off 8k" || rc=1
	off=$((off + 8 * K))
done
rtc=$(_get_be "$IMG" 56 4)
if [ $rc -eq 0 ] && { [ "$end" -ge $((last * RANGE)) ] || [ $((rtc * 64)) -ne "$entries" ]; }; then
	_qdiag "QEMU's image ends at $end with a table of $rtc clusters: no room to test"
	rc=1
fi
_qdiag "QEMU wrote $off bytes; image end $end, table of $entries blocks, B at $((last * RANGE))"
_wroom "$IMG" $((8 << 20)) || rc=1
_result "image: QEMU's data ends in range $((last - 1)) of $entries" $rc
[ $rc -eq 0 ] || ktap_finish

# --- map, the sector of B delayed ----------------------------------------------
_qmark
loop=$(_wimg_attach "$IMG") || exit 1
bs=$((last * RANGE / 512))
tot=$(blockdev --getsz "$loop")
printf '%s\n' "0 $bs linear $loop 0" \
	"$bs 1 delay $loop $bs 0 $loop $bs 3000 $loop $bs 0" \
	"$((bs + 1)) $((tot - bs - 1)) linear $loop $((bs + 1))" |
	dmsetup create "${P}delay" || { echo "# cannot create ${P}delay"; exit 1; }
_cleanup_register "dm ${P}delay"
_dm_create "$P" "$(_qcow2_table "/dev/mapper/${P}delay" $(((8 << 20) / 512)))" || exit 1
DEV=/dev/mapper/$P

# --- the race -----------------------------------------------------------------
# 1. past range last - 1 (free clusters there, 8 more, and an L2 table)
free=$((((last * RANGE) - end) / 512))
W1=$(((free + 8) * 512))
rc=0
python3 - "$DEV" "$loop" $((4 << 20)) "$W1" $((5 << 20)) $((64 * K)) $((bs * 512)) <<'PYEOF' || rc=1
import mmap, os, struct, sys, threading, time
dev, loop = sys.argv[1], sys.argv[2]
off1, len1, off2, len2, b_off = (int(x) for x in sys.argv[3:8])

def pattern(n, byte):
    buf = mmap.mmap(-1, n)
    buf.write(bytes([byte]) * n)
    return buf

def header_rt(fd, buf):
    os.preadv(fd, [buf], 0)
    return struct.unpack(">Q", buf[48:56])[0]

fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
raw = os.open(loop, os.O_RDONLY | os.O_DIRECT)
sec = mmap.mmap(-1, 4096)
t0 = time.time()
assert os.pwrite(fd, pattern(len1, 0x5a), off1) == len1
print("# 1. %d bytes written in %.1f s" % (len1, time.time() - t0))
rt0 = header_rt(raw, sec)
flush = threading.Thread(target=os.fsync, args=(fd,))
flush.start()
time.sleep(1)
w2 = threading.Thread(target=os.pwrite, args=(fd, pattern(len2, 0xa5), off2))
t0 = time.time()
w2.start()
ok = False
while time.time() - t0 < 30:
    rt = header_rt(raw, sec)
    if rt != rt0:
        os.preadv(raw, [sec], b_off)
        first = struct.unpack(">Q", sec[0:8])[0]
        print("# 3. the header names the table at %d (was %d) %.2f s after the write;"
              " B's first entry: %d" % (rt, rt0, time.time() - t0, first))
        ok = first == 1
        break
    time.sleep(0.01)
else:
    print("# 3. the table did not grow within 30 s: nothing tested")
w2.join()
flush.join()
os.fsync(fd)
os.close(fd)
os.close(raw)
sys.exit(0 if ok else 1)
PYEOF
_result "the table grew only after the copy of the new refcount block was written" $rc

# --- the image ----------------------------------------------------------------
rc=0
_dm_remove "$P" || rc=1
_dm_remove "${P}delay" || rc=1
_wcheck "$IMG" || rc=1
_qio "$IMG" "read -q -P 0x5a $((4 << 20)) $W1" "read -q -P 0xa5 $((5 << 20)) $((64 * K))" || rc=1
_check_dmesg_clean >/dev/null || { _qdiag "dmesg not clean"; rc=1; }
_result "qemu-img check exits 0 and QEMU reads both writes" $rc
ktap_finish
