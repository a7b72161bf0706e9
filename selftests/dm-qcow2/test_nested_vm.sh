#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# test_nested_vm.sh - a qemu guest whose disk is a mapped qcow2 overlay.
#
# The use the target is made for on virtualization hosts: QEMU runs a guest
# on /dev/mapper/NAME as a raw block device with O_DIRECT and Linux AIO
# (format=raw,cache=none,aio=native, a libvirt <disk type='block'>).
#
#   - base.qcow2 (32 MiB) holds known data (0xa5 in [0, 1M), 0x3c in
#     [8M, 8.5M)); overlay.qcow2 has it as backing file and is opened
#     read-write with qcow2setup open;
#   - a nested qemu-system-x86_64 (TCG) boots this kernel (uname -r) with a
#     busybox initramfs made here (busybox, the virtio_pci/virtio_blk modules
#     of the running kernel decompressed, random data to write, and the MD5
#     sums the guest must see) on -drive file=/dev/mapper/NAME,format=raw,
#     cache=none,aio=native,if=virtio;
#   - the guest's init checks the backing data and an unallocated range
#     (zeros) through /dev/vda, writes 256 KiB at 4 MiB, 4 KiB at
#     8 MiB + 4 KiB (inside a backing cluster: copy on write) and the last
#     64 KiB of the disk with O_DIRECT + fsync, reads all of it back
#     (O_DIRECT), prints markers on its serial console and powers off;
#   - afterwards qcow2setup close, `qemu-img check` of both images is clean,
#     `qemu-img compare` finds the overlay identical to the expected raw
#     image, qemu-io reads the backing patterns and the guest's data through
#     the overlay, and the backing image is unchanged.
#
# TCG inside the TCG test VM is slow: 2.5 to 8 minutes from start to
# poweroff, depending on the host, most of it the nested kernel's boot.  To
# shorten it, the nested qemu boots the uncompressed vmlinux inside
# /boot/vmlinuz through its PVH entry point when it can (no firmware load, no
# decompression; the bzImage otherwise) and skips a few tracing/BPF/entropy
# initcalls the guest does not need.  The nested run's time is printed; the
# nested qemu is killed after $QCOW2_NESTED_TIMEOUT seconds (default 1200,
# under the 1500 s of settings).
#
# Needs root, the module, qemu-system-x86_64 with its firmware
# (/usr/share/seabios, /usr/share/qemu), a static busybox, cpio, qemu-img,
# qemu-io, python3, the kernel /boot/vmlinuz-$(uname -r), the tool built on
# the host (tools/qcow2setup/qcow2setup, or $QCOW2SETUP) and >= 1 GiB of RAM.

. "$(dirname "$0")/test_common.sh"

TOP=$(cd "$(dirname "$0")/../.." && pwd)
Q2S=${QCOW2SETUP:-$TOP/tools/qcow2setup/qcow2setup}
KVER=$(uname -r)
KERNEL=${QCOW2_NESTED_KERNEL:-/boot/vmlinuz-$KVER}
BUSYBOX=${QCOW2_NESTED_BUSYBOX:-/bin/busybox}
NESTED_TIMEOUT=${QCOW2_NESTED_TIMEOUT:-1200}
# Initcalls the nested guest does without (kernels lacking one ignore it)
NESTED_SKIP=jent_mod_init,trace_eval_init,init_kprobe_trace,bpf_tcp_ca_kfunc_init,bpf_dummy_struct_ops_init

[ -x "$Q2S" ] || _skip "qcow2setup is not built ($Q2S): run 'make -C tools/qcow2setup' on the host"
_require_root
_require_cmd qemu-system-x86_64 qemu-img qemu-io python3 cpio md5sum modprobe timeout cmp
_require_module
[ -r "$KERNEL" ] || _skip "no kernel image $KERNEL"
[ -x "$BUSYBOX" ] || _skip "no busybox at $BUSYBOX (busybox-static)"
"$BUSYBOX" --list 2>/dev/null | grep -qx insmod || _skip "$BUSYBOX has no insmod"
[ -r /usr/share/seabios/bios-256k.bin ] || [ -r /usr/share/qemu/bios-256k.bin ] ||
	_skip "no SeaBIOS image for qemu-system-x86_64 (seabios package)"

WORK=$(_scratch_dir)
[ -d "$WORK" ] || _fail "no scratch directory"
NAME="q2sn$$"
MIB=$((1 << 20))
VSIZE=$((32 * MIB))

_nested_cleanup()
{
	if [ -n "${QEMU_PID:-}" ]; then
		kill "$QEMU_PID" 2>/dev/null
		wait "$QEMU_PID" 2>/dev/null
	fi
	if dmsetup info "$NAME" >/dev/null 2>&1; then
		"$Q2S" close --force "$NAME" >/dev/null 2>&1 || dmsetup remove --retry "$NAME" >/dev/null 2>&1
	fi
	return 0
}
_on_exit _nested_cleanup

# _md5 FILE OFFSET LEN: MD5 of a byte range of FILE (4 KiB aligned)
_md5()
{
	dd if="$1" bs=4096 skip=$(($2 / 4096)) count=$(($3 / 4096)) status=none | md5sum | cut -d' ' -f1
}

# _console_tail: the nested console as diagnostics
_console_tail()
{
	_diag "nested console (last lines):"
	tail -n "${1:-25}" "$WORK/console.log" 2>/dev/null | tr -d '\r' | sed 's/^/  /' | _diag_stdin
}

_diag_stdin()
{
	local l
	while IFS= read -r l; do
		echo "# $l"
	done
}

# ---------------------------------------------------------------------------
# Images and the expected content

# Ranges (byte offsets): backing data, the guest's three writes.
R1_OFF=0 R1_LEN=$MIB				# 0xa5 in base
R2_OFF=$((8 * MIB)) R2_LEN=$((512 << 10))	# 0x3c in base
Z_OFF=$((2 * MIB)) Z_LEN=$((256 << 10))		# nothing anywhere: zeros
W1_OFF=$((4 * MIB)) W1_LEN=$((256 << 10))	# guest write, unallocated
W2_OFF=$((8 * MIB + 4096)) W2_LEN=4096		# guest write, in a backing cluster
W3_OFF=$((VSIZE - (64 << 10))) W3_LEN=$((64 << 10))	# guest write, end of disk

_make_images()
{
	python3 - "$WORK" "$VSIZE" "$R1_OFF" "$R1_LEN" "$R2_OFF" "$R2_LEN" \
		"$W1_OFF" "$W1_LEN" "$W2_OFF" "$W2_LEN" "$W3_OFF" "$W3_LEN" <<'EOF' || return 1
import os, random, sys
w = sys.argv[1]
a = [int(x) for x in sys.argv[2:]]
vsize, r1o, r1l, r2o, r2l = a[0:5]
writes = [(a[5], a[6], "w1"), (a[7], a[8], "w2"), (a[9], a[10], "w3")]
rnd = random.Random(0x9c0c2)
base = bytearray(vsize)
base[r1o:r1o + r1l] = b"\xa5" * r1l
base[r2o:r2o + r2l] = b"\x3c" * r2l
with open(os.path.join(w, "base.raw"), "wb") as f:
    f.write(base)
for off, ln, name in writes:
    d = rnd.randbytes(ln)
    with open(os.path.join(w, name + ".bin"), "wb") as f:
        f.write(d)
    base[off:off + ln] = d
with open(os.path.join(w, "expected.raw"), "wb") as f:
    f.write(base)
EOF
	qemu-img create -q -f qcow2 "$WORK/base.qcow2" "$VSIZE" || return 1
	qemu-io -f qcow2 -c "write -q -P 0xa5 $R1_OFF $R1_LEN" \
		-c "write -q -P 0x3c $R2_OFF $R2_LEN" "$WORK/base.qcow2" >/dev/null || return 1
	qemu-img create -q -f qcow2 -b "$WORK/base.qcow2" -F qcow2 "$WORK/overlay.qcow2" || return 1
	qemu-img compare -q -f qcow2 -F raw "$WORK/overlay.qcow2" "$WORK/base.raw" || {
		_diag "the new overlay does not read as the backing data"
		return 1
	}
}

# ---------------------------------------------------------------------------
# The nested guest's initramfs

# Modules (decompressed, in load order) for virtio-pci and virtio-blk; the
# built-in ones are left out.
_collect_modules()
{
	local m p n=0 base seen=" "
	mkdir -p "$WORK/initrd/m" || return 1
	for m in virtio_pci virtio_blk; do
		while read -r p; do
			base=${p##*/}
			base=${base%.xz}; base=${base%.zst}; base=${base%.gz}
			case "$seen" in *" $base "*) continue ;; esac
			seen="$seen$base "
			n=$((n + 1))
			local out
			out=$WORK/initrd/m/$(printf '%02d' $n)-$base
			case "$p" in
			*.xz) xz -dc "$p" >"$out" ;;
			*.zst) zstd -qdc "$p" >"$out" ;;
			*.gz) gzip -dc "$p" >"$out" ;;
			*) cp "$p" "$out" ;;
			esac || { _diag "cannot decompress $p"; return 1; }
		done < <(modprobe --show-depends "$m" 2>/dev/null | awk '$1 == "insmod" { print $2 }')
	done
	_diag "nested modules: $(cd "$WORK/initrd/m" && echo ./*.ko | sed 's|\./||g')"
	# Nothing to load is fine only if both are built in.
	if [ "$n" = 0 ]; then
		grep -q '/virtio_blk.ko' "/lib/modules/$KVER/modules.builtin" 2>/dev/null || {
			_diag "virtio_blk is neither a module nor built in for $KVER"
			return 1
		}
	fi
	return 0
}

_make_initramfs()
{
	local d=$WORK/initrd
	mkdir -p "$d/bin" "$d/dev" "$d/proc" "$d/sys" || return 1
	cp "$BUSYBOX" "$d/bin/busybox" || return 1
	ln -s busybox "$d/bin/sh"
	_collect_modules || return 1
	cp "$WORK/w1.bin" "$WORK/w2.bin" "$WORK/w3.bin" "$d/" || return 1

	# Checks before the writes ("OFFSET LEN MD5", 4 KiB units in the guest)
	{
		echo "$((R1_OFF / 4096)) $((R1_LEN / 4096)) $(_md5 "$WORK/base.raw" "$R1_OFF" "$R1_LEN")"
		echo "$((R2_OFF / 4096)) $((R2_LEN / 4096)) $(_md5 "$WORK/base.raw" "$R2_OFF" "$R2_LEN")"
		echo "$((Z_OFF / 4096)) $((Z_LEN / 4096)) $(_md5 "$WORK/base.raw" "$Z_OFF" "$Z_LEN")"
	} >"$d/before.sums"
	# ... and after (the whole 8 MiB range with the copy-on-write cluster)
	{
		echo "$((R1_OFF / 4096)) $((R1_LEN / 4096)) $(_md5 "$WORK/expected.raw" "$R1_OFF" "$R1_LEN")"
		echo "$((W1_OFF / 4096)) $((W1_LEN / 4096)) $(_md5 "$WORK/expected.raw" "$W1_OFF" "$W1_LEN")"
		echo "$((R2_OFF / 4096)) $((R2_LEN / 4096)) $(_md5 "$WORK/expected.raw" "$R2_OFF" "$R2_LEN")"
		echo "$((W3_OFF / 4096)) $((W3_LEN / 4096)) $(_md5 "$WORK/expected.raw" "$W3_OFF" "$W3_LEN")"
	} >"$d/after.sums"
	echo "$((W1_OFF / 4096)) $((W1_LEN / 4096)) w1.bin
$((W2_OFF / 4096)) $((W2_LEN / 4096)) w2.bin
$((W3_OFF / 4096)) $((W3_LEN / 4096)) w3.bin" >"$d/writes"
	echo "$VSIZE" >"$d/vsize"

	cat >"$d/init" <<'EOF'
#!/bin/sh
# init of the nested guest (test_nested_vm.sh)
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
up() { cut -d' ' -f1 /proc/uptime; }
die() { echo "NESTED-FAIL: $* (up $(up) s)"; sync; poweroff -f; sleep 5; echo o >/proc/sysrq-trigger; }
for m in /m/*.ko; do
	[ -e "$m" ] || continue
	insmod "$m" || die "insmod $m"
done
i=0
while [ ! -b /dev/vda ]; do
	i=$((i + 1))
	[ $i -gt 300 ] && die "no /dev/vda"
	sleep 0.1
done
echo "NESTED-START $(cat /sys/block/vda/size) sectors (up $(up) s)"
[ "$(cat /sys/block/vda/size)" = "$(($(cat /vsize) / 512))" ] || die "disk size"
# sum OFF4K LEN4K: MD5 of a range, O_DIRECT
sum() { dd if=/dev/vda bs=4096 skip="$1" count="$2" iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1; }
while read -r off len want; do
	got=$(sum "$off" "$len")
	[ "$got" = "$want" ] || die "before: range $off+$len (4K): $got, expected $want"
done </before.sums
echo "NESTED-BACKING-OK (up $(up) s)"
while read -r off len f; do
	dd if="/$f" of=/dev/vda bs=4096 seek="$off" count="$len" oflag=direct conv=notrunc,fsync 2>/dev/null ||
		die "write $f at $off"
	got=$(sum "$off" "$len")
	want=$(md5sum "/$f" | cut -d' ' -f1)
	[ "$got" = "$want" ] || die "read back $f at $off: $got, expected $want"
done </writes
while read -r off len want; do
	got=$(sum "$off" "$len")
	[ "$got" = "$want" ] || die "after: range $off+$len (4K): $got, expected $want"
done </after.sums
sync
echo "NESTED-WRITE-OK (up $(up) s)"
echo "NESTED-DONE"
poweroff -f
EOF
	chmod 755 "$d/init"
	(cd "$d" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$WORK/initrd.cpio"
}

# ---------------------------------------------------------------------------

# _nested_kernel: print the kernel for the nested qemu.  The vmlinux inside
# $KERNEL when its compressor is known, it decompresses to an ELF file and
# that has the PVH entry note (Xen note type 18, which QEMU needs to boot an
# ELF kernel); $KERNEL itself otherwise.
_nested_kernel()
{
	local conf=/boot/config-$KVER magic dec off out=$WORK/vmlinux

	if [ -z "${QCOW2_NESTED_KERNEL:-}" ] && [ -r "$conf" ]; then
		if grep -q '^CONFIG_KERNEL_ZSTD=y' "$conf"; then
			magic='\x28\xb5\x2f\xfd' dec="zstd -dcq"
		elif grep -q '^CONFIG_KERNEL_XZ=y' "$conf"; then
			magic='\xfd7zXZ\x00' dec="xz -dcq"
		elif grep -q '^CONFIG_KERNEL_GZIP=y' "$conf"; then
			magic='\x1f\x8b\x08' dec="gzip -dcq"
		fi
	fi
	if [ -n "${magic:-}" ] && command -v "${dec%% *}" >/dev/null && command -v readelf >/dev/null; then
		off=$(LC_ALL=C grep -obUaP "$magic" "$KERNEL" | head -n 1 | cut -d: -f1)
	fi
	if [ -n "${off:-}" ]; then
		# The payload is followed by more of the bzImage: the decompressor
		# complains about it after writing the whole of vmlinux.
		tail -c +$((off + 1)) "$KERNEL" | $dec >"$out" 2>/dev/null
		if [ "$(head -c 4 "$out" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] &&
		   readelf -n "$out" 2>/dev/null | grep -q '^ *Xen .*(0x00000012)'; then
			echo "$out"
			return
		fi
		rm -f "$out"
	fi
	echo "$KERNEL"
}

_run_nested()
{
	local t0 rc kernel
	kernel=$(_nested_kernel)
	_diag "nested kernel: $kernel"
	: >"$WORK/console.log"
	t0=${EPOCHREALTIME//[.,]/}
	timeout --kill-after=10 "$NESTED_TIMEOUT" \
		qemu-system-x86_64 -accel tcg -m 256 -smp 1 \
		-nodefaults -no-user-config -display none -monitor none -no-reboot \
		-serial "file:$WORK/console.log" \
		-kernel "$kernel" -initrd "$WORK/initrd.cpio" \
		-append "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init mitigations=off initcall_blacklist=$NESTED_SKIP" \
		-drive "file=/dev/mapper/$NAME,format=raw,cache=none,aio=native,if=virtio" \
		</dev/null >"$WORK/qemu.out" 2>&1 &
	QEMU_PID=$!
	wait "$QEMU_PID"
	rc=$?
	QEMU_PID=""
	NESTED_US=$((${EPOCHREALTIME//[.,]/} - t0))
	_diag "nested qemu: exit $rc after $((NESTED_US / 1000000)).$((NESTED_US % 1000000 / 100000)) s (TCG in TCG, boot to poweroff)"
	[ -s "$WORK/qemu.out" ] && _diag "qemu said:" "$(head -5 "$WORK/qemu.out")"
	return $rc
}

ktap_header
ktap_plan 8

# 1: images, the expected content and the initramfs
if _make_images && _make_initramfs; then
	ktap_ok "nested_vm: images and nested initramfs built"
	ready=1
else
	ktap_fail "nested_vm: images and nested initramfs built"
	ready=0
fi

# 2: qcow2setup open (read-write)
opened=0
if [ $ready = 1 ] && "$Q2S" open "$WORK/overlay.qcow2" "$NAME" >/dev/null &&
   [ -b "/dev/mapper/$NAME" ] && [ "$(blockdev --getsize64 "/dev/mapper/$NAME")" = "$VSIZE" ]; then
	opened=1
	ktap_ok "nested_vm: overlay opened read-write"
else
	ktap_fail "nested_vm: overlay opened read-write"
fi

# 3-4: the nested guest
if [ $opened = 1 ]; then
	_run_nested
	qrc=$?
	con=$(tr -d '\r' <"$WORK/console.log")
	if grep -q '^NESTED-BACKING-OK' <<<"$con"; then
		ktap_ok "nested_vm: guest booted and reads the backing data"
	else
		ktap_fail "nested_vm: guest booted and reads the backing data"
	fi
	if [ $qrc = 0 ] && grep -q '^NESTED-WRITE-OK' <<<"$con" &&
	   grep -q '^NESTED-DONE' <<<"$con" && ! grep -q 'NESTED-FAIL' <<<"$con"; then
		ktap_ok "nested_vm: guest wrote, read back and powered off"
	else
		_console_tail 30
		ktap_fail "nested_vm: guest wrote, read back and powered off"
	fi
	grep -h 'NESTED-' <<<"$con" | _diag_stdin
else
	ktap_skip "nested_vm: guest booted and reads the backing data" "not opened"
	ktap_skip "nested_vm: guest wrote, read back and powered off" "not opened"
fi

# 5: close
if [ $opened = 1 ] && "$Q2S" close "$NAME" && ! dmsetup info "$NAME" >/dev/null 2>&1; then
	ktap_ok "nested_vm: qcow2setup close"
	closed=1
else
	ktap_fail "nested_vm: qcow2setup close"
	closed=0
fi

# 6-8: QEMU's view of the images
if [ $closed = 1 ]; then
	out=$(qemu-img check "$WORK/overlay.qcow2" 2>&1)
	rc=$?
	[ $rc = 0 ] || _diag "qemu-img check overlay: exit $rc" "$out"
	ktap_result $rc "nested_vm: qemu-img check of the overlay is clean"

	rc=0
	out=$(qemu-img compare -f qcow2 -F raw "$WORK/overlay.qcow2" "$WORK/expected.raw" 2>&1) ||
		{ _diag "qemu-img compare: $out"; rc=1; }
	out=$(qemu-io -r -f qcow2 \
		-c "read -q -P 0xa5 $R1_OFF $R1_LEN" \
		-c "read -q -P 0x3c $R2_OFF 4096" \
		-c "read -q -P 0x3c $((W2_OFF + W2_LEN)) $((R2_OFF + R2_LEN - W2_OFF - W2_LEN))" \
		-c "read -q -P 0 $Z_OFF $Z_LEN" "$WORK/overlay.qcow2" 2>&1)
	if [ -n "$out" ]; then
		_diag "qemu-io read -P: $out"
		rc=1
	fi
	qemu-img convert -f qcow2 -O raw "$WORK/overlay.qcow2" "$WORK/overlay.raw" || rc=1
	for w in "$W1_OFF $W1_LEN w1" "$W2_OFF $W2_LEN w2" "$W3_OFF $W3_LEN w3"; do
		read -r off len f <<<"$w"
		cmp -s <(dd if="$WORK/overlay.raw" bs=4096 skip=$((off / 4096)) count=$((len / 4096)) status=none) \
			"$WORK/$f.bin" || { _diag "the guest's $f is not at $off in the overlay"; rc=1; }
	done
	ktap_result $rc "nested_vm: QEMU reads the guest's data and the backing data"

	rc=0
	out=$(qemu-img check "$WORK/base.qcow2" 2>&1) || { _diag "qemu-img check base: $out"; rc=1; }
	out=$(qemu-img compare -f qcow2 -F raw "$WORK/base.qcow2" "$WORK/base.raw" 2>&1) ||
		{ _diag "base changed: $out"; rc=1; }
	ktap_result $rc "nested_vm: backing image unchanged and clean"
else
	ktap_skip "nested_vm: qemu-img check of the overlay is clean" "not closed"
	ktap_skip "nested_vm: QEMU reads the guest's data and the backing data" "not closed"
	ktap_skip "nested_vm: backing image unchanged and clean" "not closed"
fi

_check_dmesg_clean || true
ktap_finish
