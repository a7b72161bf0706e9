#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# bench.sh - `make bench`: dm-qcow2 against dm-linear (raw), qemu-nbd and a
# qemu-storage-daemon VDUSE export, in one test VM, on the same device.
#
# Usage: make bench [QUICK=1] [KVER=...]     (or run this script directly)
#
# Environment:
#   KVER            kernel to boot (default: the newest 6.12 of tools/testing/kvers.sh)
#   QUICK=1         quick mode for CI smoke use: 3 s points and a subset
#   BENCH_DEV       nullblk (default: null_blk memory_backed=1 in the guest)
#                   or virtio (two virtio-blk disks backed by host tmpfs)
#   BENCH_ONLY      kinds to run, in order (default: empty prealloc overlay
#                   compressed chain sparse open fsync)
#   BENCH_RUNTIME, BENCH_RAMP   seconds per steady fio point (default 15 and 2;
#                   QUICK: 3 and 1)
#   BENCH_REPEAT    runs of raw and dm-qcow2 for (a)'s 4k points and (e), alternating;
#                   the report shows medians and the spread of the ratios
#                   (default 3; QUICK: 1)
#   BENCH_FIO_CPUS  if set, fio runs on these guest CPUs only (its
#                   --cpus_allowed, e.g. 0), for every backend (default: any)
#   BENCH_OUT       output directory (default results/bench-<date>-<kver>)
#   BENCH_MAX_LOAD  if set, first wait (at most BENCH_WAIT_MAX s, default
#                   1800) until the host's 1-minute load average is below it;
#                   runs anyway afterwards and says so in results.md
#
# Output in the output directory: results.md (printed at the end),
# results.json, chart.svg, cache-curve.svg, host.json, hostload.txt (1-min
# load average every 10 s) and vm/{output,console,dmesg}.log.
#
# Exit status: run-vm.sh's when the VM run failed (125: kernel report, 124:
# timeout, 126: infrastructure), else 1 when a planned point has no number,
# else 0.
#
# Measured here (2 host CPUs, TCG): QUICK about 5 minutes, full about 42.
set -u

top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top" || exit 1

kver=${KVER:-}
if [ -z "$kver" ]; then
	for v in $(tools/testing/kvers.sh); do
		case $v in 6.12.*) kver=$v ;; esac
	done
	[ -n "$kver" ] || kver=$(tools/testing/kvers.sh | awk '{ print $NF }')
fi
[ -n "$kver" ] || { echo "bench: no test kernel found (tools/testing/kvers.sh)" >&2; exit 1; }
quick=${QUICK:-0}
[ "$quick" = 1 ] || quick=0
devkind=${BENCH_DEV:-nullblk}

t_start=$(date +%s)
date_s=$(date +%Y%m%d-%H%M%S)
out=${BENCH_OUT:-$top/results/bench-$date_s-$kver}
mkdir -p "$out" || exit 1
out=$(cd "$out" && pwd)

if [ -n "${MAKELEVEL:-}" ]; then
	cmd="make bench"
else
	cmd="tools/bench/bench.sh"
fi
for v in QUICK KVER BENCH_DEV BENCH_ONLY BENCH_RUNTIME BENCH_RAMP BENCH_REPEAT BENCH_FIO_CPUS BENCH_MAX_LOAD; do
	[ -n "${!v:-}" ] && cmd="$v=${!v} $cmd"
done

echo "bench: kernel $kver, $([ "$quick" = 1 ] && echo QUICK || echo full) mode, output $out"
make -s KVER="$kver" modules || { echo "bench: module build failed" >&2; exit 1; }
module=$top/build/$kver/dm-qcow2.ko

# Optionally wait for a quiet host.
load_wait=""
if [ -n "${BENCH_MAX_LOAD:-}" ]; then
	deadline=$((SECONDS + ${BENCH_WAIT_MAX:-1800}))
	while :; do
		l=$(cut -d' ' -f1 /proc/loadavg)
		if awk -v l="$l" -v m="$BENCH_MAX_LOAD" 'BEGIN { exit !(l < m) }'; then
			load_wait="load $l after waiting $((SECONDS)) s"
			break
		fi
		if [ "$SECONDS" -ge "$deadline" ]; then
			load_wait="load still $l after $SECONDS s: ran anyway"
			break
		fi
		echo "bench: host load $l >= $BENCH_MAX_LOAD, waiting"
		sleep 30
	done
	echo "bench: $load_wait"
fi

# The compressed image is converted on the host (zlib in qemu-img under
# TCG takes minutes) and read by the guest from here over 9p.
work=$out/work
mkdir -p "$work"
case " ${BENCH_ONLY:-compressed} " in
*" compressed "*)
	csize=1G
	[ "$quick" = 1 ] && csize=256M
	echo "bench: making the compressed image ($csize of 50%-compressible data, zlib)"
	fio --name=gen --filename="$work/src.raw" --rw=write --bs=1M --size="$csize" \
		--buffer_compress_percentage=50 --refill_buffers --randseed=1 \
		--output=/dev/null &&
		qemu-img convert -c -O qcow2 -o cluster_size=65536 "$work/src.raw" "$work/compressed.qcow2" ||
		echo "bench: making the compressed image failed" >&2
	rm -f "$work/src.raw"
	;;
esac

vm_args=(--kver "$kver" --module "$module" --mem 3072 --cpus 2 --log "$out/vm"
	 --timeout "$([ "$quick" = 1 ] && echo 1800 || echo 4200)"
	 --env "BENCH_QUICK=$quick" --env "BENCH_DEV=$devkind" --env "BENCH_WORK=$work")
[ "$devkind" = virtio ] && vm_args+=(--disk 1100G --disk 4G)
for v in BENCH_ONLY BENCH_RUNTIME BENCH_RAMP BENCH_REPEAT BENCH_FIO_CPUS; do
	[ -n "${!v:-}" ] && vm_args+=(--env "$v=${!v}")
done

jq -n --arg date "$(date -Iseconds)" --arg kver "$kver" --arg cmd "$cmd" \
	--arg vmcmd "tools/testing/vm/run-vm.sh ${vm_args[*]} -- tools/bench/bench-guest.sh" \
	--arg cpu "$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)" \
	--arg ncpu "$(nproc)" --arg hk "$(uname -r)" \
	--arg git "$(GIT_OPTIONAL_LOCKS=0 git -C "$top" describe --always --dirty 2>/dev/null || echo ?)" \
	--arg load0 "$(cut -d' ' -f1-3 /proc/loadavg)" --arg maxload "${BENCH_MAX_LOAD:-}" \
	--arg lw "$load_wait" \
	'{date: $date, kver: $kver, command: $cmd, vm_command: $vmcmd, cpu: $cpu, ncpu: $ncpu,
	  host_kernel: $hk, git: $git, load_at_start: $load0, max_load: $maxload,
	  load_wait: $lw}' >"$out/host.json"

# 1-minute load average every 10 s while the VM runs.
(
	while :; do
		echo "$(date +%s) $(cut -d' ' -f1 /proc/loadavg)"
		sleep 10
	done
) >"$out/hostload.txt" &
sampler=$!

t_vm=$(date +%s)
tools/testing/vm/run-vm.sh "${vm_args[@]}" -- tools/bench/bench-guest.sh
rc=$?
vm_s=$(($(date +%s) - t_vm))
kill "$sampler" 2>/dev/null
wait "$sampler" 2>/dev/null

rm -rf "$work"
tmp=$(mktemp)
jq --argjson rc "$rc" --argjson vm "$vm_s" --argjson total $(($(date +%s) - t_start)) \
	'. + {vm_status: $rc, vm_s: $vm, total_s: $total}' "$out/host.json" >"$tmp" &&
	cat "$tmp" >"$out/host.json"; rm -f "$tmp"
python3 tools/bench/bench-report.py "$out"
rrc=$?

echo
sed -n '/^## Results/,/^## How it was measured/p' "$out/results.md" | sed '$d'
echo "bench: $out/results.md (full report), results.json, chart.svg"
echo "bench: VM run $vm_s s, total $(($(date +%s) - t_start)) s, run-vm status $rc"
[ "$rc" -ne 0 ] && exit "$rc"
exit "$rrc"
