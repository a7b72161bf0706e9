#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# bench-guest.sh - guest half of `make bench` (tools/bench/bench.sh boots a
# run-vm.sh guest and runs this as root in it).
#
# Compares, on the same block device and with the same fio jobs:
#   raw     dm-linear over the device (the limit)
#   qcow2   dm-qcow2 over a qcow2 image on the device
#   nbd     qemu-nbd --cache=none --aio=native + the kernel nbd client
#   vduse   qemu-storage-daemon vduse-blk export (cache.direct=on, aio=native)
# over the image kinds of the brief:
#   empty       (b) fresh image per write run, every write allocates;
#                   64 KiB clusters with and without extended_l2=on
#   prealloc    (a) preallocation=metadata, then written fully by qemu-io
#   overlay     (c) fresh overlay over the (a) image, copy-on-write writes,
#                   64 KiB clusters with and without extended_l2=on
#   (with (b) and (c): raw doing the device I/O of one such write without
#   extended L2, its floor; see kind_floor)
#   compressed  (d) zlib-compressed image (made on the host), reads
#   chain       (e) 1, 16, 256 layers, data in the bottom layer (the (a) image),
#                   each measured alternately with raw (REPEAT times)
#   sparse      (f) 1 TiB, preallocation=metadata (128 MiB of L2 tables),
#                   4k random reads over all of it, dm-qcow2 cache_size curve
#   open        (g) dmsetup create time and open_reads vs qemu-img info reads
#   fsync       (h) 4k random writes each followed by fsync, one writer and
#                   four, preallocated and allocating, on a device with a
#                   volatile write cache
#
# Output: lines "BENCH-<TYPE> <json>" on stdout (the host parses them from
# run-vm's output.log): META, PLAN, POINT, CURVE, OPEN, NOTE, DONE.  Every
# planned point is announced with BENCH-PLAN first, so that a point that
# produced no number is visible.
#
# Environment (set by bench.sh with run-vm.sh --env):
#   BENCH_QUICK=1       short points, a subset of workloads (CI smoke)
#   BENCH_RUNTIME/BENCH_RAMP  seconds per fio point (default 15/2, quick 3/1)
#   BENCH_REPEAT        (a)'s 4k points and (e): raw and dm-qcow2 this many times,
#                       alternating (default 3, quick 1)
#   BENCH_DEV           nullblk (default) or virtio (the --disk disks)
#   BENCH_WORK          host directory (read-only here) with compressed.qcow2
#   BENCH_ONLY          kinds to run (space separated; default all)
#   BENCH_FIO_CPUS      if set, fio runs on these CPUs only (fio's
#                       --cpus_allowed, e.g. 0), for every backend

set -u
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
QUICK=${BENCH_QUICK:-0}
if [ "$QUICK" = 1 ]; then
	RUNTIME=${BENCH_RUNTIME:-3}
	RAMP=${BENCH_RAMP:-1}
	REPEAT=${BENCH_REPEAT:-1}
else
	RUNTIME=${BENCH_RUNTIME:-15}
	RAMP=${BENCH_RAMP:-2}
	REPEAT=${BENCH_REPEAT:-3}
fi
DEVKIND=${BENCH_DEV:-nullblk}
WORK=${BENCH_WORK:-}
ONLY=${BENCH_ONLY:-empty prealloc overlay compressed chain sparse open fsync}
FIO_CPUS=${BENCH_FIO_CPUS:-}

GIB=$((1 << 30))
SIZE=$GIB			# virtual size of the images and the fio region
EMPTY_SIZE=$((64 * GIB))	# (b): large, so that random writes rarely meet
RESET_SIZE=$((3 * GIB))		# what scratch_reset() discards (null_blk: frees)
SPARSE_SIZE=$((1024 * GIB))	# (f); QUICK: 128 GiB (16 MiB of L2 tables), made in seconds
# Allocating runs are bounded by a number of I/Os (each 4k write into a new
# 64 KiB cluster stores 64 KiB; null_blk keeps it in guest RAM).
if [ "$QUICK" = 1 ]; then
	CAP_EMPTY_4K=4096; CAP_EMPTY_1M=256; CAP_COW=2048; CAP_FSYNC=512
	SPARSE_SIZE=$((128 * GIB))
else
	CAP_EMPTY_4K=16384; CAP_EMPTY_1M=1024; CAP_COW=8192; CAP_FSYNC=2048
fi

TMP=/tmp/bench
REP=1
QSD_PID=/run/bench-qsd.pid
VDUSE_NAME=bench-vduse
CHAIN_LOOPS=()
DEVPATH=""
FSYNC_DEV=""	# (h)'s device, with a volatile write cache
ATTACH_MS=0
STAT_DEVS=()	# block devices under the backend (/sys/class/block names)
BACKENDS=(raw qcow2 nbd vduse)
HAVE_NBD=0
HAVE_VDUSE=0

mkdir -p "$TMP" /run/lock

# ---------------------------------------------------------------------------
# Helpers

now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }

emit() { printf 'BENCH-%s %s\n' "$1" "$2"; }

note() {
	echo "bench: $*" >&2
	emit NOTE "$(jq -nc --arg t "$*" '$t')"
}

log() { echo "bench: $*" >&2; }

# fio arguments of a workload
wl_args() {
	case $1 in
	rr1)  echo "--rw=randread --bs=4k --iodepth=1" ;;
	rr32) echo "--rw=randread --bs=4k --iodepth=32" ;;
	rw1)  echo "--rw=randwrite --bs=4k --iodepth=1" ;;
	rw32) echo "--rw=randwrite --bs=4k --iodepth=32" ;;
	sr)   echo "--rw=read --bs=1M --iodepth=4" ;;
	sw)   echo "--rw=write --bs=1M --iodepth=4" ;;
	# the floors of kind_floor(): 64 KiB writes; 64 KiB reads and writes
	fa1)  echo "--rw=randwrite --bs=64k --iodepth=1" ;;
	fa32) echo "--rw=randwrite --bs=64k --iodepth=32" ;;
	fc1)  echo "--rw=randrw --rwmixread=50 --bs=64k --iodepth=1" ;;
	fc32) echo "--rw=randrw --rwmixread=50 --bs=64k --iodepth=32" ;;
	# (h): an fsync after each write, one writer or four
	f1)   echo "--rw=randwrite --bs=4k --iodepth=1 --fsync=1" ;;
	f4)   echo "--rw=randwrite --bs=4k --iodepth=1 --fsync=1 --numjobs=4 --group_reporting" ;;
	*)    return 1 ;;
	esac
}

wl_unit() { case $1 in sr|sw) echo MiB/s ;; *) echo IOPS ;; esac; }

# stat_devs DEV...: remember the devices whose requests devstat counts
stat_devs() {
	local d
	STAT_DEVS=()
	for d in "$@"; do
		d=$(readlink -f "$d")
		STAT_DEVS+=("${d##*/}")
	done
}

# Requests completed by the STAT_DEVS, summed, as JSON (fields of
# Documentation/block/stat.rst: reads, writes (incl. write-zeroes), sectors
# written, discards, flushes).  Builtins only: no exec between the counters
# and fio.
devstat() {
	local d f r=0 w=0 ws=0 dc=0 fl=0
	for d in "${STAT_DEVS[@]}"; do
		[ -r "/sys/class/block/$d/stat" ] || { echo null; return; }
		read -r -a f < "/sys/class/block/$d/stat"
		r=$((r + f[0])); w=$((w + f[4])); ws=$((ws + f[6]))
		dc=$((dc + ${f[11]:-0})); fl=$((fl + ${f[15]:-0}))
	done
	[ ${#STAT_DEVS[@]} -gt 0 ] || { echo null; return; }
	printf '{"reads":%s,"writes":%s,"wsect":%s,"discards":%s,"flushes":%s}\n' \
		"$r" "$w" "$ws" "$dc" "$fl"
}

# dm-qcow2 status fields after the target name, as JSON (no jq: cheaper)
qcow2_status() {
	local s name=$1
	s=$(dmsetup status "$name" 2>/dev/null) || { echo null; return; }
	# shellcheck disable=SC2086
	set -- $s
	if [ "${3:-}" != qcow2 ] || [ $# -lt 14 ]; then
		echo null
		return
	fi
	printf '{"raw":"%s","mode":"%s","virtual_size":%s,"cluster_size":%s,"layers":%s,' \
		"${*:4}" "$4" "$5" "$6" "$7"
	printf '"cache_used":%s,"cache_slots":%s,"hits":%s,"misses":%s,"metadata_reads":%s,' \
		"${8%/*}" "${8#*/}" "$9" "${10}" "${11}"
	printf '"open_reads":%s,"io_errors":%s,"dirty_slices":%s,"stats":%s}\n' \
		"${12}" "${13}" "${14}" "$(qcow2_stats "$name")"
}

# the counters of the target's stats message as JSON (null if it has none)
qcow2_stats() {
	local out n v s=""
	out=$(dmsetup message "$1" 0 stats 2>/dev/null) || { echo null; return; }
	while read -r n v; do
		[[ $n =~ ^[a-z_]+$ && $v =~ ^[0-9]+$ ]] || { echo null; return; }
		s+="${s:+,}\"$n\":$v"
	done <<<"$out"
	echo "{$s}"
}

# ---------------------------------------------------------------------------
# Devices

setup_devices() {
	case $DEVKIND in
	nullblk)
		if ! modprobe null_blk nr_devices=2 gb=1100 bs=512 memory_backed=1 discard=1; then
			note "null_blk not available"
			return 1
		fi
		udevadm settle 2>/dev/null
		SCRATCH=/dev/nullb0
		BASE=/dev/nullb1
		DEV_DESC="null_blk memory_backed=1 (2 devices of 1100 GiB, sparse, 512-byte sectors, discard=1, other parameters default)"
		;;
	virtio)
		# shellcheck disable=SC2086
		set -- ${QCOW2_DISKS:-}
		[ $# -ge 2 ] || { note "BENCH_DEV=virtio needs two --disk disks"; return 1; }
		SCRATCH=$1
		BASE=$2
		DEV_DESC="virtio-blk disks (host tmpfs files, qemu cache=writeback, aio=threads)"
		;;
	*)
		note "unknown BENCH_DEV=$DEVKIND"
		return 1
		;;
	esac
	if [ ! -b "$SCRATCH" ] || [ ! -b "$BASE" ]; then
		note "devices $SCRATCH $BASE missing"
		return 1
	fi
	# Whether the device zeroes cheaply decides what an allocating write
	# costs (dm-qcow2 fills the rest of a new cluster with write-zeroes).
	DEV_DESC="$DEV_DESC; write_zeroes_max_bytes $(cat "/sys/block/${SCRATCH#/dev/}/queue/write_zeroes_max_bytes" 2>/dev/null || echo '?')"
	modprobe loop
	if modprobe nbd 2>/dev/null && [ -b /dev/nbd0 ]; then
		HAVE_NBD=1
		nbd_keeper
	else
		note "qemu-nbd column skipped: the nbd module is not available in this kernel"
	fi
	if ! modprobe vduse 2>/dev/null; then
		note "vduse column skipped: no vduse module in this kernel"
	elif ! modprobe virtio_vdpa 2>/dev/null; then
		note "vduse column skipped: no virtio_vdpa module in this kernel"
	elif ! command -v vdpa >/dev/null; then
		note "vduse column skipped: no vdpa tool (iproute2)"
	elif ! grep -qa vduse-blk "$(command -v qemu-storage-daemon)"; then
		note "vduse column skipped: qemu-storage-daemon has no vduse-blk export"
	elif ! vduse_works; then
		note "vduse column skipped: a vduse-blk export here fails I/O that qemu-io does on its image (seen on Debian's 6.12.118 guest kernel, not on 6.12.117)"
	else
		HAVE_VDUSE=1
	fi
	return 0
}

# Whether a vduse-blk export reads what qemu-io wrote, and overwrites it so
# that qemu-io reads the new data, on a small image (a loop device, of fixed
# size, over a file of $TMP: the write goes to an allocated cluster):
# a kernel whose VDUSE fails every request would otherwise make each point of
# the column an error.
vduse_works() {
	local img=$TMP/vduse-probe.qcow2 loopdev got ok=1

	qemu-img create -q -f qcow2 "$img" 16M &&
		qemu-io -f qcow2 -c "write -P 0x5a 0 128k" "$img" >/dev/null || return 1
	loopdev=$(losetup -f --show "$img") || return 1
	if attach_vduse rw "$loopdev"; then
		got=$(dd if="$DEVPATH" bs=4096 count=1 iflag=direct status=none |
			od -An -tx1 -N4 | tr -d ' ')
		[ "$got" = 5a5a5a5a ] &&
			head -c 4096 /dev/zero | tr '\0' '\245' |
			dd of="$DEVPATH" bs=4096 seek=16 oflag=direct status=none && ok=0
		detach_vduse
	fi
	losetup -d "$loopdev"
	if [ "$ok" = 0 ]; then
		got=$(qemu-io -f qcow2 -c "read -P 0xa5 64k 4k" "$img" 2>&1) &&
			! grep -q 'verification failed' <<<"$got" || ok=1
	fi
	rm -f "$img"
	return "$ok"
}

# Touch the guest's free memory once and free it again.  Under TCG the first
# write to a page of guest memory costs the QEMU process a page fault on the
# host; without this, the first points that store much data (null_blk keeps
# it in guest memory: the allocating points of (b), which run first) pay for
# it and later ones writing as much do not (tools/bench/first-touch.sh).
warm_memory() {
	local mb t0
	mb=$(awk '/^MemFree:/ { print int($2 / 1024) - 512 }' /proc/meminfo)
	[ "$mb" -gt 0 ] || return 0
	t0=$(now_ms)
	mkdir -p "$TMP/warm" && mount -t tmpfs -o size="${mb}m" bench-warm "$TMP/warm" ||
		{ note "touching guest memory failed: no tmpfs"; return 0; }
	fallocate -l "${mb}MiB" "$TMP/warm/f" || note "touching guest memory failed"
	umount "$TMP/warm"
	log "touched $mb MiB of guest memory in $(($(now_ms) - t0)) ms"
}

# scratch_reset [DEV]: free what earlier runs stored on DEV (default the
# scratch device; null_blk: memory).
scratch_reset() {
	local dev=${1:-$SCRATCH}
	blkdiscard -o 0 -l "$RESET_SIZE" "$dev" 2>/dev/null ||
		dd if=/dev/zero of="$dev" bs=1M count=1 oflag=direct status=none
}

backend_ok() {
	case $1 in
	nbd) [ "$HAVE_NBD" = 1 ] ;;
	vduse) [ "$HAVE_VDUSE" = 1 ] ;;
	*) return 0 ;;
	esac
}

# ---------------------------------------------------------------------------
# Attach / detach.  Each sets DEVPATH and ATTACH_MS (wall time of the attach).

attach_raw() {
	local dev=$1 t0
	t0=$(now_ms)
	dmsetup create bench-raw --table "0 $(blockdev --getsz "$dev") linear $dev 0" || return 1
	[ -b /dev/mapper/bench-raw ] || dmsetup mknodes bench-raw
	ATTACH_MS=$(($(now_ms) - t0))
	DEVPATH=/dev/mapper/bench-raw
	stat_devs "$dev"
}

# attach_qcow2 rw|ro SIZE CACHE_SIZE TOP [BACKING...]   (CACHE_SIZE "" = default)
attach_qcow2() {
	local mode=$1 size=$2 cache=$3 top=$4 b nopt table args=() t0
	shift 4
	nopt=$((3 * $#))
	[ -n "$cache" ] && nopt=$((nopt + 2))
	table="0 $((size / 512)) qcow2 $top"
	[ "$nopt" -gt 0 ] && table+=" $nopt"
	for b in "$@"; do
		table+=" backing qcow2 $b"
	done
	[ -n "$cache" ] && table+=" cache_size $cache"
	[ "$mode" = ro ] && args+=(--readonly)
	t0=$(now_ms)
	dmsetup create bench-qcow2 "${args[@]}" --table "$table" || return 1
	ATTACH_MS=$(($(now_ms) - t0))
	[ -b /dev/mapper/bench-qcow2 ] || dmsetup mknodes bench-qcow2
	DEVPATH=/dev/mapper/bench-qcow2
	stat_devs "$top" "$@"
}

# nbd_keeper   connect /dev/nbd15 to a small file for the rest of the run
# (never disconnected: the guest powers off with poweroff -f).  Each nbd
# socket is marked with sk_set_memalloc(), whose first user turns a static
# key on and whose last one turns it off again: live kernel text patching,
# which under TCG panics the guest at random ("Oops: int3").  With this
# connection held, the key flips once, now, while the guest is quiet, and
# not around every qemu-nbd column.
nbd_keeper() {
	[ -b /dev/nbd15 ] || return 0
	truncate -s 1M "$TMP/nbd-keeper.raw" &&
		qemu-nbd -r -f raw -c /dev/nbd15 "$TMP/nbd-keeper.raw" >/dev/null 2>&1 ||
		note "could not hold /dev/nbd15 open: nbd columns may flip a static key"
}

# attach_nbd rw|ro TOP [BACKING...]   (qemu opens the backing files from the
# headers; they are given for devstat only)
attach_nbd() {
	local mode=$1 top=$2 args=() t0 i s
	shift
	stat_devs "$@"
	[ "$mode" = ro ] && args+=(-r)
	t0=$(now_ms)
	qemu-nbd "${args[@]}" -c /dev/nbd0 -f qcow2 --cache=none --aio=native "$top" \
		>"$TMP/nbd.log" 2>&1 || { cat "$TMP/nbd.log" >&2; return 1; }
	for ((i = 0; i < 200; i++)); do
		read -r s </sys/block/nbd0/size
		[ "$s" -gt 0 ] && break
		sleep 0.05
	done
	ATTACH_MS=$(($(now_ms) - t0))
	DEVPATH=/dev/nbd0
}

detach_nbd() {
	local pid="" i
	[ -r /sys/block/nbd0/pid ] && read -r pid </sys/block/nbd0/pid 2>/dev/null
	qemu-nbd -d /dev/nbd0 >/dev/null 2>&1
	if [ -n "$pid" ]; then
		for ((i = 0; i < 200; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.05
		done
	fi
}

# attach_vduse rw|ro TOP [BACKING...]: every layer is given explicitly, each
# on a host_device with cache.direct=on and aio=native (as qemu-nbd gets).
attach_vduse() {
	local mode=$1 ro=false wr=on js=null i t0 devs b r
	shift
	devs=("$@")
	[ "$mode" = ro ] && { ro=true; wr=off; }
	stat_devs "$@"
	for ((i = ${#devs[@]} - 1; i >= 0; i--)); do
		r=true
		[ "$i" = 0 ] && r=$ro	# backing layers are read-only
		js="{\"driver\":\"qcow2\",\"node-name\":\"l$i\",\"read-only\":$r,\"backing\":$js,"
		js+="\"file\":{\"driver\":\"host_device\",\"filename\":\"${devs[i]}\","
		js+="\"cache\":{\"direct\":true},\"aio\":\"native\",\"read-only\":$r}}"
	done
	rm -f "$QSD_PID"
	t0=$(now_ms)
	qemu-storage-daemon --blockdev "$js" \
		--export "type=vduse-blk,id=e0,node-name=l0,name=$VDUSE_NAME,writable=$wr" \
		--pidfile "$QSD_PID" --daemonize >"$TMP/qsd.log" 2>&1 ||
		{ sed -E 's/--blockdev \{.*\}: /--blockdev ...: /' "$TMP/qsd.log" >&2; return 1; }
	vdpa dev add name "$VDUSE_NAME" mgmtdev vduse || { detach_vduse; return 1; }
	DEVPATH=""
	for ((i = 0; i < 400; i++)); do
		for b in /sys/bus/vdpa/devices/"$VDUSE_NAME"/virtio*/block/*; do
			[ -e "$b" ] && DEVPATH=/dev/${b##*/}
		done
		[ -n "$DEVPATH" ] && [ -b "$DEVPATH" ] && break
		sleep 0.05
	done
	ATTACH_MS=$(($(now_ms) - t0))
	if [ -z "$DEVPATH" ] || [ ! -b "$DEVPATH" ]; then
		detach_vduse
		return 1
	fi
}

detach_vduse() {
	local pid i
	vdpa dev del "$VDUSE_NAME" 2>/dev/null
	if [ -r "$QSD_PID" ]; then
		read -r pid <"$QSD_PID"
		kill "$pid" 2>/dev/null
		for ((i = 0; i < 400; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.05
		done
		rm -f "$QSD_PID"
	fi
}

# attach BACKEND rw|ro SIZE TOP [BACKING...]  (raw: dm-linear over TOP)
attach() {
	local be=$1 mode=$2 size=$3
	shift 3
	case $be in
	raw) attach_raw "$1" ;;
	qcow2) attach_qcow2 "$mode" "$size" "${CACHE_SIZE:-}" "$@" ;;
	nbd) attach_nbd "$mode" "$@" ;;
	vduse) attach_vduse "$mode" "$@" ;;
	esac
}

detach() {
	case $1 in
	raw) dmsetup remove bench-raw ;;
	qcow2) dmsetup remove bench-qcow2 ;;
	nbd) detach_nbd ;;
	vduse) detach_vduse ;;
	esac
}

cleanup() {
	dmsetup remove bench-raw >/dev/null 2>&1
	dmsetup remove bench-qcow2 >/dev/null 2>&1
	dmsetup remove bench-open >/dev/null 2>&1
	detach_nbd >/dev/null 2>&1
	detach_vduse >/dev/null 2>&1
	[ ${#CHAIN_LOOPS[@]} -gt 0 ] && "$HERE/bench-chain.py" detach "${CHAIN_LOOPS[@]}" 2>/dev/null
	CHAIN_LOOPS=()
}
trap cleanup EXIT

# ---------------------------------------------------------------------------
# One measurement

# plan KIND VARIANT WL BACKEND: announce a point
plan() {
	emit PLAN "$(jq -nc --arg k "$1" --arg v "$2" --arg w "$3" --arg b "$4" \
		'{kind: $k, variant: $v, workload: $w, backend: $b}')"
}

# fio_args DEV WL REGION warmup|steady|alloc [CAP]: sets FIO_ARGS
fio_args() {
	local dev=$1 wl=$2 region=$3 mode=$4 cap=${5:-0}
	# shellcheck disable=SC2207
	FIO_ARGS=(--name=bench --filename="$dev" --direct=1 --ioengine=libaio --numjobs=1
		  --size="$region" --norandommap --randrepeat=1 --eta=never
		  $(wl_args "$wl"))
	[ -n "$FIO_CPUS" ] && FIO_ARGS+=(--cpus_allowed="$FIO_CPUS")
	case $mode in
	warmup)	# other offsets than the measured run (its seed is fio's default)
		FIO_ARGS+=(--time_based --runtime="$RAMP" --randseed=4242 --output=/dev/null) ;;
	steady)	FIO_ARGS+=(--time_based --runtime="$RUNTIME" --output-format=json) ;;
	alloc)	FIO_ARGS+=(--runtime="$RUNTIME" --number_ios="$cap" --output-format=json) ;;
	esac
}

# point KIND VARIANT WL BACKEND REGION steady|alloc CAP
# The backend must be attached (DEVPATH).  Emits BENCH-POINT.  Steady points
# first run a warm-up of RAMP seconds (rather than fio's ramp_time) so that
# the dm-qcow2 counters, read between the two runs, cover exactly the
# measured run.  Few execs: each costs ~0.1-0.5 s under TCG.
point() {
	local kind=$1 variant=$2 wl=$3 be=$4 region=$5 mode=$6 cap=${7:-0}
	local st0=null st1=null ds0=null ds1=null t0 err="" out=$TMP/fio.json
	if [ ! -b "$DEVPATH" ]; then
		failed "$kind" "$variant" "$wl" "$be" "$DEVPATH is not a block device"
		return
	fi
	if [ "$mode" = steady ] && [ "$RAMP" -gt 0 ]; then
		fio_args "$DEVPATH" "$wl" "$region" warmup
		fio "${FIO_ARGS[@]}" 2>"$TMP/fio.err" || err="warm-up: $(head -c 300 "$TMP/fio.err")"
	fi
	[ "$be" = qcow2 ] && st0=$(qcow2_status bench-qcow2)
	ds0=$(devstat)
	fio_args "$DEVPATH" "$wl" "$region" "$mode" "$cap"
	rm -f "$out"
	t0=$(now_ms)
	fio "${FIO_ARGS[@]}" >"$out" 2>"$TMP/fio.err" || err+="fio: $(head -c 300 "$TMP/fio.err")"
	ds1=$(devstat)
	[ "$be" = qcow2 ] && st1=$(qcow2_status bench-qcow2)
	# One jq: the BENCH-POINT line, then a summary line for the log.
	# (failed when there is no output or jq cannot read it)
	# shellcheck disable=SC2015
	[ -s "$out" ] &&
	jq -r --arg k "$kind" --arg v "$variant" --arg w "$wl" --arg b "$be" \
		--arg unit "$(wl_unit "$wl")" --arg mode "$mode" --argjson cap "$cap" \
		--argjson region "$region" --argjson attach_ms "$ATTACH_MS" \
		--argjson t "$t0" --argjson st0 "$st0" --argjson st1 "$st1" \
		--argjson ds0 "$ds0" --argjson ds1 "$ds1" \
		--arg dev "$DEVPATH" --arg err "$err" --argjson rep "${REP:-1}" \
		'(.jobs[0] // {}) as $j |
		 {kind: $k, variant: $v, workload: $w, backend: $b, unit: $unit, mode: $mode, rep: $rep,
		  region: $region, cap: (if $mode == "alloc" then $cap else null end),
		  attach_ms: $attach_ms, t_ms: $t, dev: $dev, status_before: $st0, status_after: $st1,
		  devstat_before: $ds0, devstat_after: $ds1,
		  ios: (($j.read.total_ios // 0) + ($j.write.total_ios // 0)),
		  iops: (($j.read.iops // 0) + ($j.write.iops // 0)),
		  mibs: ((($j.read.bw_bytes // 0) + ($j.write.bw_bytes // 0)) / 1048576),
		  runtime_ms: ([$j.read.runtime // 0, $j.write.runtime // 0] | max),
		  lat_us: (([$j.read.clat_ns.mean // 0, $j.write.clat_ns.mean // 0] | max) / 1000),
		  lat_p99_us: (([$j.read.clat_ns.percentile["99.000000"] // 0,
				 $j.write.clat_ns.percentile["99.000000"] // 0] | max) / 1000),
		  iops_stddev: ([$j.read.iops_stddev // 0, $j.write.iops_stddev // 0] | max),
		  fio_error: ($j.error // null),
		  error: (if $err != "" then $err elif $j == {} then "no fio result" else null end)}
		 | . + {value: (if .error != null or (.fio_error // 1) != 0 or .ios == 0 then null
				elif $unit == "IOPS" then .iops else .mibs end)}
		 | "BENCH-POINT \(tojson)",
		   "bench: \($k)/\($v) \($w) \($b): " +
		   (if .value == null then "ERROR \(.error // "fio error \(.fio_error)")"
		    elif $unit == "IOPS" then "\(.iops | floor) IOPS" else "\(.mibs * 10 | floor / 10) MiB/s" end)' \
		"$out" 2>/dev/null ||
		failed "$kind" "$variant" "$wl" "$be" "no fio output: $err"
}

# run_point KIND VARIANT WL BE ro|rw SIZE steady|alloc CAP DEVICE...: attach
# BE over DEVICE... (SIZE bytes, also the point's region), run one point and
# detach; an attach that fails is the point's failure (status 1)
run_point() {
	local kind=$1 v=$2 wl=$3 be=$4 amode=$5 size=$6 pmode=$7 cap=$8
	shift 8
	if ! attach "$be" "$amode" "$size" "$@"; then
		failed "$kind" "$v" "$wl" "$be" "attach failed"
		return 1
	fi
	point "$kind" "$v" "$wl" "$be" "$size" "$pmode" "$cap"
	detach "$be"
}

# failed KIND VARIANT WL BACKEND WHY: a planned point without a number
failed() {
	emit POINT "$(jq -nc --arg k "$1" --arg v "$2" --arg w "$3" --arg b "$4" --arg e "$5" \
		'{kind: $k, variant: $v, workload: $w, backend: $b, value: null, error: $e}')"
	log "$1/$2 $3 $4: ERROR $5"
}

# qemu-img check of the image after a write run through dm-qcow2
check_image() {
	local out
	if out=$(qemu-img check -f qcow2 "$@" 2>&1); then
		emit NOTE "$(jq -nc --arg t "qemu-img check after $CHECK_WHAT: clean" '$t')"
	else
		note "qemu-img check after $CHECK_WHAT FAILED: $(tr '\n' ' ' <<<"$out" | cut -c1-300)"
	fi
}

# ---------------------------------------------------------------------------
# (a) prealloc: preallocation=metadata, then every byte written by qemu-io

make_base() {
	local i cmds=()
	qemu-img create -q -f qcow2 -o preallocation=metadata,cluster_size=65536 "$BASE" "$SIZE" ||
		return 1
	for ((i = 0; i < SIZE; i += 128 << 20)); do
		cmds+=(-c "write -q -P 0x5a $i $((128 << 20))")
	done
	qemu-io -n -f qcow2 "${cmds[@]}" "$BASE" || return 1
	BASE_READY=1
}

# raw must not write over the image: it maps the scratch device, whose
# first SIZE bytes are written once, so that raw reads and overwrites data
# like the image kinds do.
fill_raw_region() {
	scratch_reset
	fio --name=fill --filename="$SCRATCH" --direct=1 --ioengine=libaio --rw=write --bs=1M \
		--iodepth=4 --size="$SIZE" --eta=never --output=/dev/null || note "filling the raw region failed"
}

kind_prealloc() {
	local wl be dev reps wls=(rr1 rr32 rw1 rw32 sr sw)
	[ "$QUICK" = 1 ] && wls=(rr32 rw32 sr)
	for wl in "${wls[@]}"; do for be in "${BACKENDS[@]}"; do
		backend_ok "$be" && plan prealloc 64k "$wl" "$be"
	done; done
	fill_raw_region
	# The 4k points decide the "95% of raw" question, which is within the
	# noise of one run on this host: raw and dm-qcow2 run REPEAT times,
	# alternating, and the report takes medians (and the ratio of each
	# pair).  The userspace backends run once.
	for wl in "${wls[@]}"; do
		reps=1
		case $wl in rr*|rw*) reps=$REPEAT ;; esac
		for ((REP = 1; REP <= reps; REP++)); do
			for be in "${BACKENDS[@]}"; do
				backend_ok "$be" || continue
				[ "$REP" -gt 1 ] && [ "$be" != raw ] && [ "$be" != qcow2 ] && continue
				dev=$BASE
				[ "$be" = raw ] && dev=$SCRATCH
				run_point prealloc 64k "$wl" "$be" rw "$SIZE" steady 0 "$dev"
			done
		done
	done
	REP=1
	CHECK_WHAT="the prealloc writes" check_image "$BASE"
	scratch_reset
}

# ---------------------------------------------------------------------------
# (b) empty: a fresh 64 GiB image per write run; no ramp (every write of
# the run allocates, there is no steady state to ramp into), at most CAP I/Os

kind_empty() {
	local wl be cap v opts wls=(rw1 rw32 sw) variants=(64k 64k-extl2)
	[ "$QUICK" = 1 ] && wls=(rw32)
	# raw runs once per workload (with 64k): no image changes what it does
	for v in "${variants[@]}"; do for wl in "${wls[@]}"; do for be in "${BACKENDS[@]}"; do
		[ "$v" != 64k ] && [ "$be" = raw ] && continue
		backend_ok "$be" && plan empty "$v" "$wl" "$be"
	done; done; done
	for v in "${variants[@]}"; do
		opts=cluster_size=65536
		[ "$v" = 64k-extl2 ] && opts+=,extended_l2=on
		for wl in "${wls[@]}"; do
			cap=$CAP_EMPTY_4K
			[ "$wl" = sw ] && cap=$CAP_EMPTY_1M
			for be in "${BACKENDS[@]}"; do
				[ "$v" != 64k ] && [ "$be" = raw ] && continue
				backend_ok "$be" || continue
				scratch_reset
				if [ "$be" != raw ] &&
				   ! qemu-img create -q -f qcow2 -o "$opts" "$SCRATCH" "$EMPTY_SIZE"; then
					failed empty "$v" "$wl" "$be" "qemu-img create failed"
					continue
				fi
				run_point empty "$v" "$wl" "$be" rw "$EMPTY_SIZE" alloc "$cap" "$SCRATCH" &&
					[ "$be" = qcow2 ] &&
					CHECK_WHAT="empty-$v/$wl via dm-qcow2" check_image "$SCRATCH"
			done
		done
	done
	kind_floor alloc
}

# ---------------------------------------------------------------------------
# (c) overlay: fresh overlay on the scratch device over the (a) image

kind_overlay() {
	local wl be v opts wls=(rw1 rw32) variants=(64k 64k-extl2)
	[ "$QUICK" = 1 ] && wls=(rw32)
	for v in "${variants[@]}"; do for wl in "${wls[@]}"; do for be in qcow2 nbd vduse; do
		backend_ok "$be" && plan overlay "$v" "$wl" "$be"
	done; done; done
	for v in "${variants[@]}"; do
		opts=cluster_size=65536
		[ "$v" = 64k-extl2 ] && opts+=,extended_l2=on
		for wl in "${wls[@]}"; do
			for be in qcow2 nbd vduse; do
				backend_ok "$be" || continue
				scratch_reset
				if ! qemu-img create -q -f qcow2 -o "$opts" -b "$BASE" -F qcow2 \
						"$SCRATCH" "$SIZE"; then
					failed overlay "$v" "$wl" "$be" "qemu-img create failed"
					continue
				fi
				run_point overlay "$v" "$wl" "$be" rw "$SIZE" alloc "$CAP_COW" \
						"$SCRATCH" "$BASE" &&
					[ "$be" = qcow2 ] &&
					CHECK_WHAT="overlay-$v/$wl via dm-qcow2" check_image "$SCRATCH"
			done
		done
	done
	kind_floor cow
}

# kind_floor alloc|cow: raw (dm-linear) doing the device I/O that one 4k
# write of (b) or (c) costs without extended L2 when the device has no
# write-zeroes (null_blk): alloc, one 64 KiB write (the data and the zero
# fill of its new cluster); cow, one 64 KiB read (the backing cluster) and
# one 64 KiB write (the copy), as fio's randrw 50/50, whose reads and
# writes the report counts as one write of (c) per pair.  Not a hard limit:
# the backends overlap these I/Os differently, and where the device has
# write-zeroes (virtio) dm-qcow2 writes 4 KiB per allocating write after
# zeroing ahead.  Over discarded
# space, the region that scratch_reset() frees (later writes meet earlier
# ones now and then): 64 KiB writes over all of EMPTY_SIZE would keep
# gigabytes of null_blk pages that a discard of it takes minutes to free.
kind_floor() {
	local v=$1 wl wls cap
	if [ "$v" = alloc ]; then wls=(fa1 fa32); cap=$CAP_EMPTY_4K; else wls=(fc1 fc32); cap=$((2 * CAP_COW)); fi
	[ "$QUICK" = 1 ] && wls=("${wls[1]}")
	for wl in "${wls[@]}"; do plan floor "$v" "$wl" raw; done
	for wl in "${wls[@]}"; do
		scratch_reset
		run_point floor "$v" "$wl" raw rw "$RESET_SIZE" alloc "$cap" "$SCRATCH"
	done
	scratch_reset
}

# ---------------------------------------------------------------------------
# (d) compressed: zlib image converted on the host, copied onto the device

kind_compressed() {
	local wl be vsize wls=(rr1 rr32 sr) img=$WORK/compressed.qcow2
	[ "$QUICK" = 1 ] && wls=(rr32)
	for wl in "${wls[@]}"; do for be in qcow2 nbd vduse; do
		backend_ok "$be" && plan compressed zlib "$wl" "$be"
	done; done
	if [ ! -r "$img" ]; then
		for wl in "${wls[@]}"; do for be in qcow2 nbd vduse; do
			backend_ok "$be" && failed compressed zlib "$wl" "$be" "no $img"
		done; done
		return
	fi
	scratch_reset
	dd if="$img" of="$SCRATCH" bs=1M oflag=direct status=none || note "copy of $img failed"
	vsize=$(qemu-img info -f qcow2 --output=json "$SCRATCH" | jq '.["virtual-size"]')
	emit NOTE "$(jq -nc --arg t "compressed image: $(qemu-img info -f qcow2 "$SCRATCH" |
		grep -E 'virtual size|compression type' | tr '\n' ' '), $(stat -c %s "$img") bytes" '$t')"
	for wl in "${wls[@]}"; do
		for be in qcow2 nbd vduse; do
			backend_ok "$be" || continue
			run_point compressed zlib "$wl" "$be" rw "$vsize" steady 0 "$SCRATCH"
		done
	done
	scratch_reset
}

# ---------------------------------------------------------------------------
# (g) open cost of one image: wall time of `dmsetup create --noudevsync`
# (median of 3; the table load ioctl plus the dmsetup exec) and of a plain
# `dmsetup create` (with udev synchronisation, as users see it), open_reads,
# and qemu-img info's reads (strace)

# time_create TABLE: sets CREATE_MS (median of 3, --noudevsync),
# CREATE_UDEV_MS, CREATE_ST (status after the first load)
time_create() {
	local table=$1 i t0 ms=()
	CREATE_ST=null
	for i in 1 2 3; do
		t0=$(now_ms)
		dmsetup create bench-open --noudevsync --readonly --table "$table" || return 1
		ms+=($(($(now_ms) - t0)))
		[ "$i" = 1 ] && CREATE_ST=$(qcow2_status bench-open)
		udevadm settle 2>/dev/null
		dmsetup remove --retry bench-open || return 1
	done
	CREATE_MS=$(printf '%s\n' "${ms[@]}" | sort -n | sed -n 2p)
	t0=$(now_ms)
	dmsetup create bench-open --readonly --table "$table" || return 1
	CREATE_UDEV_MS=$(($(now_ms) - t0))
	dmsetup remove --retry bench-open
}

measure_open() {
	local label=$1 size=$2 top=$3 t0 tc ti pr_img table nopt b
	shift 3
	nopt=$((3 * $#))
	table="0 $((size / 512)) qcow2 $top"
	[ "$nopt" -gt 0 ] && table+=" $nopt"
	for b in "$@"; do table+=" backing qcow2 $b"; done
	time_create "$table" || { note "open: dmsetup create failed for $label"; return; }
	t0=$(now_ms)
	qemu-img info -f qcow2 --backing-chain "$top" >/dev/null 2>&1
	ti=$(($(now_ms) - t0))
	# all pread64/read syscalls of qemu-img info (strace -c, all threads) ...
	tc=$(strace -c -f -e trace=pread64,read,preadv,preadv2 \
		qemu-img info -f qcow2 --backing-chain "$top" 2>&1 >/dev/null |
		awk '$NF ~ /^(pread64|read|preadv|preadv2)$/ { n[$NF] = $4 }
		     END { printf "{\"pread64\":%d,\"read\":%d,\"preadv\":%d}", n["pread64"], n["read"], n["preadv"] + n["preadv2"] }')
	# ... and those on the image devices only
	pr_img=$(strace -f -y -e trace=pread64,read,preadv,preadv2 \
		qemu-img info -f qcow2 --backing-chain "$top" 2>&1 >/dev/null |
		grep -cE '^(\[pid +[0-9]+\] )?(pread64|read|preadv2?)\([0-9]+</dev/(nullb|vd|loop)')
	emit OPEN "$(jq -nc --arg l "$label" --argjson st "$CREATE_ST" --argjson tc "$tc" \
		--argjson c "$CREATE_MS" --argjson cu "$CREATE_UDEV_MS" \
		--argjson ti "$ti" --argjson pi "$pr_img" --argjson layers $(($# + 1)) \
		'{label: $l, layers: $layers, create_ms: $c, create_udev_ms: $cu,
		  open_reads: $st.open_reads, metadata_reads: $st.metadata_reads, status: $st.raw,
		  qemu_img_info_ms: $ti, qemu_img_info_syscalls: $tc,
		  qemu_img_info_image_reads: $pi}')"
	log "open $label: create $CREATE_MS ms ($CREATE_UDEV_MS with udev), open_reads $(jq -r .open_reads <<<"$CREATE_ST"), qemu-img info reads on image $pr_img"
}

# The same for a dm-linear table: what dmsetup and udev cost by themselves.
measure_open_linear() {
	time_create "0 $((SIZE / 512)) linear $BASE 0" || { note "open: dm-linear create failed"; return; }
	emit OPEN "$(jq -nc --argjson c "$CREATE_MS" --argjson cu "$CREATE_UDEV_MS" \
		'{label: "dm-linear over the same device (baseline)", baseline: true, layers: null,
		  create_ms: $c, create_udev_ms: $cu, open_reads: null, metadata_reads: null}')"
	log "open dm-linear: create $CREATE_MS ms ($CREATE_UDEV_MS with udev)"
}

# ---------------------------------------------------------------------------
# (e) chains of 1, 16, 256 layers; the bottom is the (a) image, the others
# empty overlays in guest tmpfs files on read-only loop devices.  All
# backends map the chain read-only.  The target compares chains measured
# minutes apart, on a host whose speed moves more than the difference
# sought: raw (over the scratch device, written as for (a)) and dm-qcow2
# run REPEAT times, alternating, next to each chain, so that each chain has
# a raw of its own to be divided by.

kind_chain() {
	local n wl be top loops wls=(rr1 rr32) lens=(1 16 256) backing
	[ "$QUICK" = 1 ] && { wls=(rr32); lens=(16); }
	for n in "${lens[@]}"; do for wl in "${wls[@]}"; do for be in "${BACKENDS[@]}"; do
		backend_ok "$be" && plan chain "$n" "$wl" "$be"
	done; done; done
	fill_raw_region
	for n in "${lens[@]}"; do
		CHAIN_LOOPS=()
		if [ "$n" -gt 1 ]; then
			rm -rf "$TMP/chain"
			mkdir -p "$TMP/chain"
			qemu-img create -q -f qcow2 -o cluster_size=65536 -b "$BASE" -F qcow2 \
				"$TMP/chain/template.qcow2" "$SIZE"
			loops=$("$HERE/bench-chain.py" build "$TMP/chain" "$TMP/chain/template.qcow2" \
				"$BASE" $((n - 1)))
			# shellcheck disable=SC2206
			CHAIN_LOOPS=($loops)
		fi
		if [ ${#CHAIN_LOOPS[@]} -ne $((n - 1)) ]; then
			for wl in "${wls[@]}"; do for be in "${BACKENDS[@]}"; do
				backend_ok "$be" && failed chain "$n" "$wl" "$be" "chain build failed"
			done; done
			continue
		fi
		top=${CHAIN_LOOPS[0]:-$BASE}
		backing=("${CHAIN_LOOPS[@]:1}")
		[ "$n" -gt 1 ] && backing+=("$BASE")
		measure_open "chain of $n layers (1 GiB, data in the bottom layer)" "$SIZE" "$top" "${backing[@]}"
		for wl in "${wls[@]}"; do
			for ((REP = 1; REP <= REPEAT; REP++)); do
				run_point chain "$n" "$wl" raw ro "$SIZE" steady 0 "$SCRATCH"
				run_point chain "$n" "$wl" qcow2 ro "$SIZE" steady 0 "$top" "${backing[@]}"
			done
			REP=1
			for be in nbd vduse; do
				backend_ok "$be" &&
					run_point chain "$n" "$wl" "$be" ro "$SIZE" steady 0 "$top" "${backing[@]}"
			done
		done
		[ ${#CHAIN_LOOPS[@]} -gt 0 ] && "$HERE/bench-chain.py" detach "${CHAIN_LOOPS[@]}"
		CHAIN_LOOPS=()
		rm -rf "$TMP/chain"
	done
	scratch_reset
}

# ---------------------------------------------------------------------------
# (f) sparse: 1 TiB, preallocation=metadata: every cluster is mapped (to
# unwritten host clusters, which read as zeros), L2 tables are 128 MiB in
# all.  4k random reads over the whole disk; dm-qcow2 cache_size curve.

kind_sparse() {
	local be cs wl=rr32 sizes=(262144 1048576 4194304 16777216 67108864)
	[ "$QUICK" = 1 ] && sizes=(262144 67108864)
	for be in "${BACKENDS[@]}"; do backend_ok "$be" && plan sparse default "$wl" "$be"; done
	for cs in "${sizes[@]}"; do plan sparse "cache$cs" "$wl" qcow2; done
	scratch_reset
	if ! qemu-img create -q -f qcow2 -o preallocation=metadata,cluster_size=65536 \
			"$SCRATCH" "$SPARSE_SIZE"; then
		for be in "${BACKENDS[@]}"; do backend_ok "$be" && failed sparse default "$wl" "$be" "qemu-img create failed"; done
		for cs in "${sizes[@]}"; do failed sparse "cache$cs" "$wl" qcow2 "qemu-img create failed"; done
		return
	fi
	measure_open "$((SPARSE_SIZE >> 30)) GiB, preallocation=metadata (every cluster mapped)" \
		"$SPARSE_SIZE" "$SCRATCH"
	for be in "${BACKENDS[@]}"; do
		backend_ok "$be" || continue
		run_point sparse default "$wl" "$be" rw "$SPARSE_SIZE" steady 0 "$SCRATCH"
	done
	for cs in "${sizes[@]}"; do
		CACHE_SIZE=$cs run_point sparse "cache$cs" "$wl" qcow2 rw "$SPARSE_SIZE" steady 0 \
			"$SCRATCH"
	done
}

# ---------------------------------------------------------------------------
# (g) open cost

kind_open() {
	measure_open_linear
	[ "${BASE_READY:-0}" = 1 ] && measure_open "1 GiB, fully allocated (the prealloc image)" "$SIZE" "$BASE"
	qemu-img create -q -f qcow2 -o preallocation=metadata,cluster_size=65536 "$SCRATCH" 16G &&
		qemu-img resize -q -f qcow2 "$SCRATCH" 1T &&
		measure_open "1 TiB, 16 GiB allocated (preallocation=metadata 16G, resized to 1T)" \
			"$SPARSE_SIZE" "$SCRATCH"
}

# ---------------------------------------------------------------------------
# (h) fsync: 4k random writes at QD1, each followed by an fsync (fio's
# --fsync=1), by one writer and by four at once (f1, f4), on a device with a
# volatile write cache: without one the block layer completes every flush
# before a backend sees it.  With null_blk that is a device of its own
# (configfs, cache_size; the other kinds keep theirs without a cache); a
# virtio disk with cache=writeback has one already.  Variants: prealloc,
# overwrites of clusters that preallocation=metadata mapped (a flush has no
# metadata to commit); empty, a fresh image per point whose writes all
# allocate (each fsync commits metadata).  With four writers, one commit may
# serve the writes of several.  devstat counts the requests every backend
# sends the device, flushes among them.

FSYNC_NULLB=/sys/kernel/config/nullb/nullb2

# fsync_dev_up: sets FSYNC_DEV (1 on failure, with a note)
fsync_dev_up() {
	local a
	if [ "$DEVKIND" != nullblk ]; then
		FSYNC_DEV=$SCRATCH
	else
		mountpoint -q /sys/kernel/config ||
			mount -t configfs configfs /sys/kernel/config 2>/dev/null
		if ! mkdir "$FSYNC_NULLB" 2>/dev/null; then
			note "fsync: no null_blk configfs device"
			return 1
		fi
		# size and cache_size in MiB: the 64 GiB image of (b) and its metadata
		for a in size=66560 blocksize=512 memory_backed=1 cache_size=64 discard=1 power=1; do
			echo "${a#*=}" >"$FSYNC_NULLB/${a%%=*}" ||
				{ note "fsync: null_blk configfs: cannot set $a"; fsync_dev_down; return 1; }
		done
		udevadm settle 2>/dev/null
		FSYNC_DEV=/dev/nullb2
	fi
	if [ ! -b "$FSYNC_DEV" ] ||
	   [ "$(cat "/sys/block/${FSYNC_DEV#/dev/}/queue/write_cache" 2>/dev/null)" != "write back" ]; then
		note "fsync: $FSYNC_DEV missing or without a volatile write cache"
		fsync_dev_down
		return 1
	fi
}

fsync_dev_down() {
	[ "$DEVKIND" = nullblk ] && [ -d "$FSYNC_NULLB" ] || return 0
	echo 0 >"$FSYNC_NULLB/power" 2>/dev/null
	rmdir "$FSYNC_NULLB" 2>/dev/null
}

kind_fsync() {
	local v wl be cap size mode wls=(f1 f4) variants=(prealloc empty)
	[ "$QUICK" = 1 ] && wls=(f4)
	for v in "${variants[@]}"; do for wl in "${wls[@]}"; do for be in "${BACKENDS[@]}"; do
		backend_ok "$be" && plan fsync "$v" "$wl" "$be"
	done; done; done
	if ! fsync_dev_up; then
		for v in "${variants[@]}"; do for wl in "${wls[@]}"; do for be in "${BACKENDS[@]}"; do
			backend_ok "$be" && failed fsync "$v" "$wl" "$be" "no device with a write cache"
		done; done; done
		return
	fi
	for v in "${variants[@]}"; do
		for wl in "${wls[@]}"; do
			# --number_ios counts per job: f4 has four
			cap=$CAP_FSYNC
			[ "$wl" = f4 ] && cap=$((CAP_FSYNC / 4))
			for be in "${BACKENDS[@]}"; do
				backend_ok "$be" || continue
				scratch_reset "$FSYNC_DEV"
				size=$SIZE mode=steady
				[ "$v" = empty ] && size=$EMPTY_SIZE mode=alloc
				if [ "$be" != raw ]; then
					if [ "$v" = prealloc ]; then
						qemu-img create -q -f qcow2 -o preallocation=metadata,cluster_size=65536 \
							"$FSYNC_DEV" "$SIZE"
					else
						qemu-img create -q -f qcow2 -o cluster_size=65536 "$FSYNC_DEV" "$EMPTY_SIZE"
					fi || { failed fsync "$v" "$wl" "$be" "qemu-img create failed"; continue; }
				fi
				run_point fsync "$v" "$wl" "$be" rw "$size" "$mode" "$cap" "$FSYNC_DEV" &&
					[ "$be" = qcow2 ] &&
					CHECK_WHAT="fsync-$v/$wl via dm-qcow2" check_image "$FSYNC_DEV"
			done
		done
	done
	scratch_reset "$FSYNC_DEV"
	fsync_dev_down
}

# ---------------------------------------------------------------------------

main() {
	local k t0 t1 durs="{}"
	setup_devices || { emit DONE '{"ok": false}'; exit 1; }
	warm_memory
	emit META "$(jq -nc --arg kernel "$(uname -r)" \
		--arg cpu "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)" \
		--argjson ncpu "$(nproc)" \
		--argjson mem "$(awk '/MemTotal/ { print int($2 / 1024) }' /proc/meminfo)" \
		--arg dev "$DEV_DESC" --arg devkind "$DEVKIND" --arg scratch "$SCRATCH" --arg base "$BASE" \
		--arg fio "$(fio --version)" --arg qemu "$(qemu-img --version | head -n 1)" \
		--argjson quick "$QUICK" --argjson runtime "$RUNTIME" --argjson ramp "$RAMP" \
		--argjson repeat "$REPEAT" --arg fio_cpus "$FIO_CPUS" \
		--argjson nbd "$HAVE_NBD" --argjson vduse "$HAVE_VDUSE" \
		--argjson cap_empty_4k "$CAP_EMPTY_4K" --argjson cap_empty_1m "$CAP_EMPTY_1M" \
		--argjson cap_cow "$CAP_COW" --argjson cap_fsync "$CAP_FSYNC" \
		--arg only "$ONLY" --argjson sparse "$SPARSE_SIZE" \
		--arg qcow2ver "$(dmsetup targets | awk '$1 == "qcow2" { print $2 }')" \
		'{guest_kernel: $kernel, guest_cpu: $cpu, guest_ncpu: $ncpu, guest_mem_mib: $mem,
		  device: $dev, device_kind: $devkind, scratch: $scratch, base: $base,
		  fio: $fio, qemu: $qemu, quick: $quick, runtime: $runtime, ramp: $ramp, repeat: $repeat,
		  fio_cpus: $fio_cpus,
		  have_nbd: $nbd, have_vduse: $vduse, cap_empty_4k: $cap_empty_4k,
		  cap_empty_1m: $cap_empty_1m, cap_cow: $cap_cow, cap_fsync: $cap_fsync,
		  kinds: $only, sparse_size: $sparse,
		  dm_qcow2_version: $qcow2ver}')"

	# Kinds run in the order given; the (a) image (the base of (c) and (e))
	# is made when the first kind that needs it starts, so that (b), first
	# by default, has the guest's memory to itself.
	for k in $ONLY; do
		case $k in
		prealloc|overlay|chain|open)
			if [ "${BASE_READY:-0}" != 1 ]; then
				t0=$(now_ms)
				make_base || note "making the prealloc image failed"
				log "prealloc image made in $(($(now_ms) - t0)) ms"
			fi
			;;
		esac
		declare -F "kind_$k" >/dev/null || { note "unknown kind $k"; continue; }
		t0=$(now_ms)
		log "=== $k"
		"kind_$k"
		t1=$(now_ms)
		durs=$(jq -c --arg k "$k" --argjson d $((t1 - t0)) '. + {($k): $d}' <<<"$durs")
	done
	emit DONE "$(jq -nc --argjson d "$durs" --arg mem "$(free -m | awk '/^Mem:/ { print $3 "/" $2 " MiB used" }')" \
		'{ok: true, kind_ms: $d, mem: $mem}')"
}

main "$@"
