#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# bench-smoke.sh - CI smoke test of `make bench`: runs the benchmark in QUICK
# mode and checks only that every planned point produced a number (and every
# open-cost measurement its counters).  No assertion on any timing or ratio:
# the numbers of a TCG guest on a shared host say nothing about a regression.
#
# Usage: tools/bench/bench-smoke.sh      (KVER=, BENCH_DEV= as for bench.sh)
# Exit status: 0 when every point has a number, 1 otherwise, or run-vm.sh's
# status (124 timeout, 125 kernel report, 126 infrastructure) when the VM run
# failed.
set -u

top=$(cd "$(dirname "$0")/../.." && pwd)
out=${BENCH_OUT:-$top/results/bench-smoke-$(date +%Y%m%d-%H%M%S)}

QUICK=1 BENCH_OUT=$out "$top/tools/bench/bench.sh"
rc=$?

if [ ! -r "$out/results.json" ]; then
	echo "bench-smoke: FAIL: no $out/results.json (bench.sh status $rc)"
	echo "bench-smoke: 0 passed, 1 failed"
	exit $((rc ? rc : 1))
fi

python3 - "$out/results.json" <<'EOF'
import json
import math
import sys

r = json.load(open(sys.argv[1]))
bad = []
points = {(p["kind"], p["variant"], p["workload"], p["backend"]): p for p in r["points"]}
for p in r["plan"]:
    k = (p["kind"], p["variant"], p["workload"], p["backend"])
    q = points.get(k)
    v = q.get("value") if q else None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        bad.append("%s: %s" % ("/".join(k), (q or {}).get("error") or "no number"))
if not r["plan"]:
    bad.append("no point was planned: the guest did not run")
if r.get("done") is None:
    bad.append("the guest did not finish (no BENCH-DONE)")
for o in r["open"]:
    if o.get("baseline"):
        continue
    for f in ("create_ms", "open_reads", "qemu_img_info_image_reads"):
        if not isinstance(o.get(f), int):
            bad.append("open cost %r: no %s" % (o.get("label"), f))
for n in r["notes"]:
    if "skipped" in n or "FAILED" in n:
        print("bench-smoke: note: %s" % n)
print("bench-smoke: %d planned points, %d with a number, %d open-cost rows" % (
    len(r["plan"]), len(r["plan"]) - sum(1 for b in bad if "/" in b.split(":")[0]), len(r["open"])))
for b in bad:
    print("bench-smoke: FAIL: %s" % b)
# The closing line make check counts: each planned point and open-cost row.
print("bench-smoke: %d passed, %d failed" % (max(0, len(r["plan"]) + len(r["open"]) - len(bad)), len(bad)))
sys.exit(1 if bad else 0)
EOF
prc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 1 ]; then
	echo "bench-smoke: FAIL: the VM run failed (status $rc)"
	echo "bench-smoke: 0 passed, 1 failed"
	exit "$rc"
fi
[ "$prc" -eq 0 ] && echo "bench-smoke: PASS ($out)"
exit "$prc"
