#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# run-fuzz.sh [SECONDS_PER_TARGET]: build the libFuzzer targets for
# qcow2-format.c, make a seed corpus from qemu-img images, replay
# regressions/ and fuzz each target for SECONDS_PER_TARGET (default 20).
# TAP output; the last line is "N passed, N failed, N skipped".
#
# Environment:
#   FUZZ_CORPUS=DIR   keep the corpus in DIR/<target> across runs (default:
#                     a temporary directory, removed unless something failed)
#   FUZZ_SEED_KIB=N   bytes of each image given to fuzz_open (default 64 KiB)
#   FUZZ_KEEP=1       keep the work directory
set -u

here=$(cd "$(dirname "$0")" && pwd)
secs=${1:-20}
seed_kib=${FUZZ_SEED_KIB:-64}
targets=(fuzz_header fuzz_open fuzz_l2 fuzz_snapshot fuzz_refcount)
pass=0
fail=0
skip=0
n=0

tap() {	# tap ok|not-ok|skip DESCRIPTION
	n=$((n + 1))
	case $1 in
	ok) echo "ok $n - $2"; pass=$((pass + 1)) ;;
	skip) echo "ok $n - $2 # SKIP"; skip=$((skip + 1)) ;;
	*) echo "not ok $n - $2"; fail=$((fail + 1)) ;;
	esac
}

finish() {
	echo "1..$n"
	if [ "$fail" != 0 ] || [ -n "${FUZZ_KEEP:-}" ]; then
		echo "# work directory kept: $work"
	else
		rm -rf "$work"
	fi
	echo "$pass passed, $fail failed, $skip skipped"
	[ "$fail" = 0 ]
	exit
}

case $secs in
'' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET]" >&2; exit 2 ;;
esac

work=$(mktemp -d "${TMPDIR:-/tmp}/dm-qcow2-fuzz.XXXXXX") || exit 1
mkdir -p "$work/img" "$work/artifacts"

# ------------------------------------------------------------------ build
if ! command -v clang >/dev/null; then
	tap not-ok "fuzz build: clang not installed (run tools/setup-deps.sh)"
	finish
fi
if make -s -C "$here" >"$work/build.log" 2>&1; then
	tap ok "fuzz build: ${#targets[@]} targets"
else
	sed 's/^/# /' "$work/build.log"
	tap not-ok "fuzz build (libclang-rt-14-dev gives the libFuzzer runtime)"
	finish
fi

# ------------------------------------------------------------------ seeds
# Each image is made by one shell command in $work/img; a failure only
# loses that seed.
mkimg() {	# mkimg NAME COMMAND
	local name=$1
	shift
	if (cd "$work/img" && ulimit -c 0 && eval "$*") >>"$work/img.log" 2>&1 &&
		[ -s "$work/img/$name" ]; then
		images+=("$name")
	else
		echo "# seed image $name could not be made"
	fi
}

images=()
C="qemu-img create -q -f qcow2"
IO="qemu-io -f qcow2"
# A few data clusters, a zero cluster and a discarded one.
W="-c 'write -P 0x11 0 64k' -c 'write -P 0x22 1M 4k' -c 'write -z 2M 64k' \
   -c 'write -P 0x33 3M 64k' -c 'discard 3M 64k'"
if command -v qemu-img >/dev/null && command -v qemu-io >/dev/null; then
	mkimg v2.qcow2 "$C -o compat=0.10 v2.qcow2 16M && $IO $W v2.qcow2"
	for cs in 512 1k 4k 16k 64k 2M; do
		mkimg "v3-$cs.qcow2" "$C -o cluster_size=$cs v3-$cs.qcow2 16M && $IO $W v3-$cs.qcow2"
	done
	for cs in 16k 64k 2M; do
		mkimg "extl2-$cs.qcow2" "$C -o extended_l2=on,cluster_size=$cs extl2-$cs.qcow2 16M &&
			$IO -c 'write -P 0x44 0 4k' -c 'write -z 8k 4k' -c 'write -P 0x55 1M 8k' \
			    $W extl2-$cs.qcow2"
	done
	for rb in 1 2 4 8 16 32 64; do
		mkimg "refcount$rb.qcow2" "$C -o refcount_bits=$rb,cluster_size=4k refcount$rb.qcow2 16M &&
			$IO $W refcount$rb.qcow2"
	done
	mkimg src.raw "qemu-img create -q -f raw src.raw 4M &&
		qemu-io -f raw -c 'write -P 0x66 0 1M' -c 'write -P 0 1M 64k' src.raw"
	mkimg zlib.qcow2 "qemu-img convert -c -O qcow2 -o cluster_size=4k src.raw zlib.qcow2"
	mkimg zstd.qcow2 "qemu-img convert -c -O qcow2 -o compression_type=zstd,cluster_size=4k \
		src.raw zstd.qcow2"
	mkimg zlib-extl2.qcow2 "qemu-img convert -c -O qcow2 -o extended_l2=on,cluster_size=16k \
		src.raw zlib-extl2.qcow2"
	mkimg snap.qcow2 "$C -o cluster_size=4k snap.qcow2 16M && $IO $W snap.qcow2 &&
		qemu-img snapshot -c first snap.qcow2 &&
		$IO -c 'write -P 0x77 0 8k' snap.qcow2 &&
		qemu-img snapshot -c second-with-a-longer-name snap.qcow2"
	mkimg snap-v2.qcow2 "$C -o compat=0.10,cluster_size=4k snap-v2.qcow2 16M &&
		$IO $W snap-v2.qcow2 && qemu-img snapshot -c s1 snap-v2.qcow2"
	mkimg base.qcow2 "$C -o cluster_size=4k base.qcow2 16M && $IO $W base.qcow2"
	mkimg backing.qcow2 "$C -o cluster_size=4k -b base.qcow2 -F qcow2 backing.qcow2 &&
		$IO -c 'write -P 0x88 4k 4k' backing.qcow2"
	mkimg backing-raw.qcow2 "$C -o cluster_size=4k -b src.raw -F raw backing-raw.qcow2"
	mkimg backing-long.qcow2 "$C -o cluster_size=512 -u -F raw \
		-b /no/such/file/with/a/rather/long/name/to/fill/the/header/cluster.img \
		backing-long.qcow2 16M"
	mkimg lazy.qcow2 "$C -o lazy_refcounts=on,cluster_size=4k lazy.qcow2 16M &&
		$IO $W lazy.qcow2"
	# qemu-io's abort leaves the dirty bit of lazy refcounts set.
	mkimg dirty.qcow2 "$C -o lazy_refcounts=on,cluster_size=4k dirty.qcow2 16M &&
		{ $IO -c 'write -P 0x99 0 8k' -c abort dirty.qcow2 || true; }"
	mkimg bitmaps.qcow2 "$C -o cluster_size=4k bitmaps.qcow2 16M &&
		qemu-img bitmap --add --granularity 64k bitmaps.qcow2 bm0"
	mkimg datafile.qcow2 "$C -o cluster_size=4k,data_file=datafile.raw datafile.qcow2 16M &&
		$IO -c 'write -P 0xaa 0 8k' datafile.qcow2"
	mkimg luks.qcow2 "$C --object secret,id=s0,data=fuzz \
		-o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10,cluster_size=4k \
		luks.qcow2 16M"
	for img in "${images[@]}"; do
		case $img in *.raw) continue ;; esac
		for t in "${targets[@]}"; do mkdir -p "$work/seeds/$t"; done
		"$here/seedgen" "$work/img/$img" "$work/seeds" "$seed_kib" |& sed 's/^/# /'
	done
	rm -rf "$work/img"
	nseeds=$(find "$work/seeds" -type f 2>/dev/null | wc -l)
	if [ "$nseeds" -gt 0 ]; then
		tap ok "fuzz seeds: $nseeds seeds from ${#images[@]} qemu-img images"
	else
		tap not-ok "fuzz seeds: no seeds from ${#images[@]} images"
	fi
else
	tap skip "fuzz seeds: qemu-img/qemu-io not installed"
fi

# ------------------------------------------------------------ regressions
mapfile -t regs < <(find "$here/regressions" -type f 2>/dev/null | sort)
for t in "${targets[@]}"; do
	if [ ${#regs[@]} = 0 ]; then
		tap skip "fuzz regressions $t: none"
	elif "$here/$t" "${regs[@]}" >"$work/$t.regress.log" 2>&1; then
		tap ok "fuzz regressions $t: ${#regs[@]} inputs"
	else
		grep -v '^INFO:' "$work/$t.regress.log" | tail -n 30 | sed 's/^/# /'
		tap not-ok "fuzz regressions $t"
	fi
done

# ---------------------------------------------------------------- fuzzing
for t in "${targets[@]}"; do
	case $t in
	fuzz_open) max_len=$((seed_kib * 1024 + 8)) ;;
	fuzz_header) max_len=$((4096 + 8)) ;;
	fuzz_snapshot) max_len=$((64 * 1024 + 10)) ;;
	*) max_len=$((4096 + 64)) ;;
	esac
	corpus=${FUZZ_CORPUS:+$FUZZ_CORPUS/$t}
	corpus=${corpus:-$work/corpus/$t}
	mkdir -p "$corpus" "$work/seeds/$t"
	log=$work/$t.log
	"$here/$t" -max_total_time="$secs" -timeout=25 -rss_limit_mb=2048 \
		-max_len="$max_len" -print_final_stats=1 -dict="$here/qcow2.dict" \
		-artifact_prefix="$work/artifacts/$t-" \
		"$corpus" "$work/seeds/$t" >"$log" 2>&1
	rc=$?
	execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
	cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
	echo "# $t: ${execs:-0} executions in $secs s"
	if [ "$rc" = 0 ] && [ "${execs:-0}" -gt 0 ]; then
		tap ok "fuzz $t: ${execs} execs, ${cov:-0} cov"
	else
		grep -v '^INFO:' "$log" | grep -v '^#[0-9]' | tail -n 40 | sed 's/^/# /'
		for a in "$work/artifacts/$t-"*; do
			[ -e "$a" ] && echo "# crashing input: $a"
		done
		tap not-ok "fuzz $t: ${execs:-0} execs, exit status $rc"
	fi
done
finish
