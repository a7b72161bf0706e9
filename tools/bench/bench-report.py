#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Turn a `make bench` run into results.json, results.md and SVG charts.

  bench-report.py OUTDIR

Reads OUTDIR/host.json (written by bench.sh), OUTDIR/vm/output.log (the
BENCH-* lines of bench-guest.sh) and OUTDIR/hostload.txt; writes
OUTDIR/results.json, OUTDIR/results.md, OUTDIR/chart.svg and
OUTDIR/cache-curve.svg.  Only the standard library is used (matplotlib is
not installed on the test hosts): the SVG is written by hand.

Exit status: 0, or 1 when a planned point has no number (so that
bench-smoke.sh can rely on it as well as on results.json).
"""
import html
import json
import math
import os
import sys

BACKENDS = ["raw", "qcow2", "nbd", "vduse"]
BACKEND_NAMES = {"raw": "raw (dm-linear)", "qcow2": "dm-qcow2", "nbd": "qemu-nbd",
                 "vduse": "vduse"}
COLORS = {"raw": "#7f7f7f", "qcow2": "#1f77b4", "nbd": "#ff7f0e", "vduse": "#2ca02c"}
WORKLOADS = {
    "rr1": "4k randread QD1", "rr32": "4k randread QD32",
    "rw1": "4k randwrite QD1", "rw32": "4k randwrite QD32",
    "sr": "1M read QD4", "sw": "1M write QD4",
    "fa1": "64k randwrite QD1", "fa32": "64k randwrite QD32",
    "fc1": "64k randrw 50/50 QD1", "fc32": "64k randrw 50/50 QD32",
    "f1": "4k randwrite + fsync, 1 writer", "f4": "4k randwrite + fsync, 4 writers",
}
WL_ORDER = ["rr1", "rr32", "rw1", "rw32", "sr", "sw", "f1", "f4"]
SPARSE_SIZE = [1 << 40]		# set from the guest's META
KIND_ORDER = ["prealloc", "empty", "overlay", "compressed", "chain", "sparse", "fsync"]


def kind_label(kind, variant):
    if kind == "prealloc":
        return "(a) preallocated, fully written"
    if kind == "empty":
        ext = variant.endswith("extl2")
        return "(b) empty, growing (allocating writes)%s" % (", extended_l2" if ext else "")
    if kind == "overlay":
        ext = variant.endswith("extl2")
        return "(c) overlay, COW writes, 64k%s" % (" extended_l2" if ext else "")
    if kind == "compressed":
        return "(d) compressed (%s)" % variant
    if kind == "chain":
        return "(e) chain of %s layer%s" % (variant, "" if variant == "1" else "s")
    if kind == "sparse":
        size = human_bytes(SPARSE_SIZE[0]).replace("G", " GiB").replace("T", " TiB")
        if variant == "default":
            return "(f) %s sparse, default cache" % size
        return "(f) %s sparse, cache_size %s" % (size, human_bytes(int(variant[len("cache"):])))
    if kind == "fsync":
        return "(h) %s, write cache" % ("preallocated, overwrites" if variant == "prealloc"
                                        else "empty, allocating writes")
    return "%s %s" % (kind, variant)


def human_bytes(n):
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("k", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return "%d%s" % (n >> shift, unit)
    return str(n)


def fmt_val(v, unit):
    if v is None:
        return "n/a"
    if unit == "IOPS":
        return "{:,}".format(int(round(v)))
    return "%.1f" % v


def nz(v):
    return "" if v is None else v


def fmt_ratio(r):
    if r is None:
        return ""
    if r >= 100:
        return "%d" % round(r)
    if r >= 10:
        return "%.1f" % r
    return "%.2f" % r


def parse_log(path):
    out = {"meta": None, "plan": [], "points": [], "open": [], "notes": [], "done": None}
    if not os.path.exists(path):
        return out
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line.startswith("BENCH-"):
                continue
            tag, _, payload = line.partition(" ")
            try:
                obj = json.loads(payload)
            except ValueError:
                out["notes"].append("unparsable line: " + line[:200])
                continue
            tag = tag[len("BENCH-"):]
            if tag == "META":
                out["meta"] = obj
            elif tag == "PLAN":
                out["plan"].append(obj)
            elif tag == "POINT":
                out["points"].append(obj)
            elif tag == "OPEN":
                out["open"].append(obj)
            elif tag == "NOTE":
                out["notes"].append(obj)
            elif tag == "DONE":
                out["done"] = obj
    return out


def key(p):
    return (p["kind"], p["variant"], p["workload"], p["backend"])


def median(vals):
    vals = sorted(vals)
    if not vals:
        return None
    m = len(vals) // 2
    return vals[m] if len(vals) % 2 else (vals[m - 1] + vals[m]) / 2


def pair_ratios(qps, rps):
    """qcow2:raw of each repetition that has both numbers (same rep)."""
    raw = {p.get("rep", 1): p["value"] for p in rps if p.get("value")}
    return [p["value"] / raw[p.get("rep", 1)] for p in qps
            if p.get("value") and p.get("rep", 1) in raw]


def counters(p):
    """dm-qcow2 cache counters during the point (after minus before)."""
    a, b = p.get("status_after"), p.get("status_before")
    if not a or not b:
        return None
    hits = a["hits"] - b["hits"]
    misses = a["misses"] - b["misses"]
    md = a["metadata_reads"] - b["metadata_reads"]
    ios = p.get("ios") or 0
    sa, sb = a.get("stats"), b.get("stats")
    st = {k: sa[k] - sb.get(k, 0) for k in sa} if sa and sb else None
    return {"hits": hits, "misses": misses, "metadata_reads": md, "stats": st, "ios": ios,
            "miss_pct": 100.0 * misses / (hits + misses) if hits + misses else 0.0,
            "md_per_io": md / ios if ios else None,
            "cache": "%d/%d" % (a["cache_used"], a["cache_slots"]),
            "dirty_after": a["dirty_slices"], "io_errors": a["io_errors"]}


def stats_cells(cn):
    """The stats message's cells of the counters table (a dm-qcow2 point)."""
    st = cn.get("stats")
    if not st:
        return " |  |  | "
    ios = cn.get("ios") or 0
    in_map = st.get("map_reads", 0) + st.get("map_writes", 0)
    return "%s | %d / %d | %d | %d (%.0f)" % (
        "%.0f%%" % (100.0 * in_map / ios) if ios else "",
        st.get("map_allocs", 0), st.get("worker_allocs", 0), st.get("copies", 0),
        st.get("commits", 0), st.get("commit_usecs", 0) / 1000.0)


def devreqs(p):
    """Requests the devices under the backend completed, per I/O of the point."""
    if not p:
        return None
    a, b = p.get("devstat_after"), p.get("devstat_before")
    ios = p.get("ios") or 0
    if not a or not b or not ios:
        return None
    d = {k: (a[k] - b[k]) / ios for k in ("reads", "writes", "discards", "flushes")}
    d["total"] = sum(d.values())
    d["kib_written"] = ((a["wsect"] - b["wsect"]) / 2 / ios
                        if "wsect" in a and "wsect" in b else None)
    return d


def build_rows(points):
    by = {key(p): p for p in points}		# the last run of a point
    runs = {}				# every run (BENCH_REPEAT)
    for p in points:
        runs.setdefault(key(p), []).append(p)
    groups = {}
    for p in points:
        groups.setdefault((p["kind"], p["variant"], p["workload"]), True)

    def sort_key(g):
        kind, variant, wl = g
        vkey = variant
        if kind == "chain":
            vkey = "%06d" % int(variant)
        elif kind == "sparse":
            vkey = "0" if variant == "default" else "1%012d" % int(variant[len("cache"):])
        elif kind == "fsync":
            vkey = "0" if variant == "prealloc" else variant
        return (KIND_ORDER.index(kind) if kind in KIND_ORDER else 99, vkey,
                WL_ORDER.index(wl) if wl in WL_ORDER else 99)

    rows = []
    for g in sorted(groups, key=sort_key):
        kind, variant, wl = g
        if (kind == "sparse" and variant != "default") or kind == "floor":
            continue		# the cache curve and the floors have tables of their own
        row = {"kind": kind, "variant": variant, "workload": wl,
               "label": kind_label(kind, variant), "workload_label": WORKLOADS.get(wl, wl),
               "unit": "MiB/s" if wl in ("sr", "sw") else "IOPS", "values": {},
               "raw_from": None, "raw_dev": devreqs(by.get((kind, variant, wl, "raw")))}
        row["runs"] = {}
        for be in BACKENDS:
            vals = [p["value"] for p in runs.get((kind, variant, wl, be), [])
                    if p.get("value") is not None]
            row["values"][be] = median(vals)
            row["runs"][be] = vals
        if by.get((kind, variant, wl, "raw")) is None:
            # raw is measured once per workload, with the (a) image kind, or
            # once per kind (empty: with the plain 64k variant)
            for src in ((kind, "64k"), ("prealloc", "64k")):
                v = median([p["value"] for p in runs.get(src + (wl, "raw"), [])
                            if p.get("value") is not None])
                if v is not None:
                    row["values"]["raw"] = v
                    row["raw_from"] = src[0]
                    row["raw_dev"] = devreqs(by.get(src + (wl, "raw")))
                    break
        q, r, n = (row["values"][b] for b in ("qcow2", "raw", "nbd"))
        row["qcow2_raw"] = q / r if q and r else None
        # Repeated points: the median of the pairs' ratios and their spread.
        pr = pair_ratios(runs.get((kind, variant, wl, "qcow2"), []),
                         runs.get((kind, variant, wl, "raw"), []))
        row["qcow2_raw_pairs"] = pr if len(pr) > 1 else None
        if len(pr) > 1:
            row["qcow2_raw"] = median(pr)
        row["qcow2_nbd"] = q / n if q and n else None
        qp = by.get((kind, variant, wl, "qcow2"))
        row["qcow2_counters"] = counters(qp) if qp else None
        row["qcow2_dev"] = devreqs(qp)
        rows.append(row)
    return rows


# The rows of (b) and (c) without extended L2, each with the raw point that
# did its device I/O (tools/bench/bench-guest.sh, kind_floor): its variant,
# workload, and how many of its I/Os make one write of the row.
FLOORS = {("empty", "64k", "rw1"): ("alloc", "fa1", 1), ("empty", "64k", "rw32"): ("alloc", "fa32", 1),
          ("overlay", "64k", "rw1"): ("cow", "fc1", 2), ("overlay", "64k", "rw32"): ("cow", "fc32", 2)}


def floor_rows(rows, points):
    out = []
    for r in rows:
        f = FLOORS.get((r["kind"], r["variant"], r["workload"]))
        if not f:
            continue
        vals = [p["value"] for p in points if key(p) == ("floor", f[0], f[1], "raw")
                and p.get("value") is not None]
        fl = median(vals) / f[2] if vals else None
        row = {"kind": r["kind"], "variant": r["variant"], "workload": r["workload"],
               "label": r["label"], "workload_label": r["workload_label"],
               "floor_workload": WORKLOADS[f[1]], "floor": fl, "values": r["values"]}
        row["ratios"] = {b: r["values"][b] / fl if fl and r["values"].get(b) else None
                         for b in ("qcow2", "nbd", "vduse")}
        out.append(row)
    return out


def chain_rows(rows):
    """(e): each longer chain against the chain of 1 layer, per workload.

    "direct" divides the medians of dm-qcow2; "through raw" divides each
    chain's dm-qcow2:raw (each chain measured next to a raw of its own), so
    that a change of the host's speed between the chains cancels out.
    """
    chain = [r for r in rows if r["kind"] == "chain"]	# in build_rows' order
    ones = {r["workload"]: r for r in chain if r["variant"] == "1"}
    out = []
    for r in chain:
        n, wl = r["variant"], r["workload"]
        one = ones.get(wl)
        if n == "1" or not one:
            continue
        q, q1 = r["values"]["qcow2"], one["values"]["qcow2"]
        rr, rr1 = r["qcow2_raw"], one["qcow2_raw"]
        out.append({"layers": int(n), "workload": wl, "workload_label": r["workload_label"],
                    "direct": q / q1 if q and q1 else None,
                    "through_raw": rr / rr1 if rr and rr1 and not r["raw_from"] and
                    not one["raw_from"] else None})
    return out


def default_cache_size(p):
    """The bound the target chose without cache_size: its slots are 4 KiB
    pages (8 MiB before version 1.3.0, which sizes it to the metadata)."""
    for k in ("status_after", "status_before"):
        st = p.get(k) or {}
        if st.get("cache_slots"):
            return st["cache_slots"] * 4096
    return 8 << 20


def curve(points):
    c = []
    for p in points:
        if p["kind"] == "sparse" and p["backend"] == "qcow2":
            cs = default_cache_size(p) if p["variant"] == "default" else int(p["variant"][len("cache"):])
            c.append({"cache_size": cs, "default": p["variant"] == "default",
                      "iops": p.get("value"), "counters": counters(p)})
    c.sort(key=lambda x: (x["cache_size"], not x["default"]))
    refs = {}
    for p in points:
        if p["kind"] == "sparse" and p["variant"] == "default" and p["backend"] != "qcow2":
            refs[p["backend"]] = p.get("value")
    return c, refs


# ---------------------------------------------------------------------------
# SVG

def svg_bars(rows, path, title):
    rows = [r for r in rows if r["values"].get("qcow2") is not None or
            any(r["values"].get(b) for b in BACKENDS)]
    bw, gap = 14, 22
    gw = bw * len(BACKENDS) + gap
    left, right, top, bottom = 70, 20, 60, 250
    h = 330
    w = left + right + gw * max(len(rows), 1)
    lo, hi = -3.0, math.log10(2.0)		# ratio to raw, log scale

    def y(ratio):
        v = min(max(math.log10(ratio), lo), hi)
        return top + (hi - v) / (hi - lo) * h

    o = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
         'font-family="sans-serif" font-size="11">' % (w, top + h + bottom),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="%d" y="20" font-size="14" font-weight="bold">%s</text>' % (left, html.escape(title)),
         '<text x="%d" y="38" fill="#444">Throughput relative to raw dm-linear on the same '
         'device and workload (log scale; hover a bar for the absolute value)</text>' % left]
    for e in range(-3, 1):
        yy = y(10 ** e)
        o.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>' % (left, w - right, yy, yy))
        o.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>' % (left - 6, yy + 4, ("%g" % 10 ** e)))
    o.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#000"/>' % (left, w - right, y(1), y(1)))
    for i, r in enumerate(rows):
        x0 = left + i * gw + gap / 2
        raw = r["values"].get("raw")
        for j, be in enumerate(BACKENDS):
            v = r["values"].get(be)
            if v is None or not raw:
                continue
            ratio = v / raw
            yy = y(ratio)
            x = x0 + j * bw
            tip = "%s, %s, %s: %s %s (%.3g x raw)%s" % (
                r["label"], r["workload_label"], BACKEND_NAMES[be], fmt_val(v, r["unit"]),
                r["unit"], ratio, " [raw from (a)]" if r["raw_from"] and be == "raw" else "")
            o.append('<rect x="%.1f" y="%.1f" width="%d" height="%.1f" fill="%s"%s>'
                     '<title>%s</title></rect>' % (
                         x, yy, bw - 2, top + h - yy, COLORS[be],
                         ' fill-opacity="0.45"' if be == "raw" and r["raw_from"] else "",
                         html.escape(tip)))
        lx = x0 + bw * len(BACKENDS) / 2
        lab = "%s | %s" % (r["workload_label"], r["label"])
        o.append('<text transform="translate(%.1f,%d) rotate(-60)" text-anchor="end">%s</text>' % (
            lx, top + h + 12, html.escape(lab)))
    lx = left + 420
    for j, be in enumerate(BACKENDS):
        o.append('<rect x="%d" y="%d" width="12" height="12" fill="%s"/>' % (lx + j * 120, 8, COLORS[be]))
        o.append('<text x="%d" y="18">%s</text>' % (lx + j * 120 + 16, BACKEND_NAMES[be]))
    o.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(o) + "\n")


def svg_curve(c, refs, path, title):
    pts = [x for x in c if x["iops"]]
    if not pts:
        return False
    left, right, top, bottom, w, h = 80, 160, 50, 50, 640, 300
    xs = [math.log2(x["cache_size"]) for x in pts]
    x_lo, x_hi = min(xs) - 0.5, max(xs) + 0.5
    ymax = max([x["iops"] for x in pts] + [v for v in refs.values() if v]) * 1.1

    def X(cs):
        return left + (math.log2(cs) - x_lo) / (x_hi - x_lo) * w

    def Y(v):
        return top + h - v / ymax * h

    o = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
         'font-family="sans-serif" font-size="11">' % (left + w + right, top + h + bottom),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="%d" y="20" font-size="14" font-weight="bold">%s</text>' % (left, html.escape(title)),
         '<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#000"/>' % (left, left + w, top + h, top + h),
         '<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#000"/>' % (left, left, top, top + h)]
    for k in range(0, 5):
        v = ymax / 1.1 * k / 4
        o.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>' % (left - 6, Y(v) + 4, "{:,}".format(int(v))))
        o.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#eee"/>' % (left, left + w, Y(v), Y(v)))
    for x in pts:
        o.append('<text x="%.1f" y="%d" text-anchor="middle">%s%s</text>' % (
            X(x["cache_size"]), top + h + 16, human_bytes(x["cache_size"]),
            " (default)" if x["default"] else ""))
    o.append('<text x="%d" y="%d" text-anchor="middle">dm-qcow2 cache_size</text>' % (left + w / 2, top + h + 36))
    o.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (
        COLORS["qcow2"], " ".join("%.1f,%.1f" % (X(x["cache_size"]), Y(x["iops"])) for x in pts)))
    for x in pts:
        cn = x["counters"] or {}
        o.append('<circle cx="%.1f" cy="%.1f" r="4" fill="%s"><title>%s: %s IOPS, miss %.1f%%</title></circle>' % (
            X(x["cache_size"]), Y(x["iops"]), COLORS["qcow2"], human_bytes(x["cache_size"]),
            "{:,}".format(int(x["iops"])), cn.get("miss_pct", 0)))
    for be, v in refs.items():
        if not v:
            continue
        o.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="%s" stroke-dasharray="5,4"/>' % (
            left, left + w, Y(v), Y(v), COLORS[be]))
        o.append('<text x="%d" y="%.1f" fill="%s">%s %s</text>' % (
            left + w + 6, Y(v) + 4, COLORS[be], BACKEND_NAMES[be], "{:,}".format(int(v))))
    o.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(o) + "\n")
    return True


# ---------------------------------------------------------------------------

def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = sys.argv[1]
    host = {}
    if os.path.exists(os.path.join(out, "host.json")):
        with open(os.path.join(out, "host.json")) as f:
            host = json.load(f)
    log = parse_log(os.path.join(out, "vm", "output.log"))
    meta = log["meta"] or {}
    if meta.get("sparse_size"):
        SPARSE_SIZE[0] = meta["sparse_size"]
    loads = []
    if os.path.exists(os.path.join(out, "hostload.txt")):
        with open(os.path.join(out, "hostload.txt")) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:
                    loads.append(float(parts[1]))
    points = log["points"]
    have = {key(p) for p in points if p.get("value") is not None}
    missing = [p for p in log["plan"] if key(p) not in have]
    rows = build_rows(points)
    floors = floor_rows(rows, points)
    chains = chain_rows(rows)
    c, refs = curve(points)

    res = {"host": host, "guest": meta, "host_load_1min": {
               "samples": len(loads), "min": min(loads) if loads else None,
               "max": max(loads) if loads else None,
               "mean": sum(loads) / len(loads) if loads else None},
           "done": log["done"], "rows": rows, "floors": floors, "chains": chains, "cache_curve": c, "cache_curve_refs": refs,
           "open": log["open"], "notes": log["notes"], "plan": log["plan"],
           "missing": missing, "points": points}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)

    kv = host.get("kver") or meta.get("guest_kernel", "?")
    title = "dm-qcow2 bench, %s, %s%s" % (kv, host.get("date", ""), " (QUICK)" if meta.get("quick") else "")
    svg_bars(rows, os.path.join(out, "chart.svg"), title)
    ssz = human_bytes(SPARSE_SIZE[0]).replace("G", " GiB").replace("T", " TiB")
    have_curve = svg_curve(c, refs, os.path.join(out, "cache-curve.svg"),
                           "%s image, 4k randread QD32: dm-qcow2 IOPS over cache_size" % ssz)

    md = []
    md.append("# dm-qcow2 benchmark: %s" % kv)
    md.append("")
    md.append("| | |")
    md.append("|---|---|")
    for k, v in (("date", host.get("date")), ("command", "`%s`" % host.get("command", "?")),
                 ("VM command", "`%s`" % host.get("vm_command", "?")),
                 ("guest kernel", meta.get("guest_kernel")),
                 ("dm-qcow2 version", meta.get("dm_qcow2_version")),
                 ("git", host.get("git")),
                 ("host CPU", "%s, %s CPUs" % (host.get("cpu"), host.get("ncpu"))),
                 ("host kernel", host.get("host_kernel")),
                 ("guest", "%s vCPUs (%s), %s MiB, TCG (no KVM)" % (
                     meta.get("guest_ncpu"), meta.get("guest_cpu"), meta.get("guest_mem_mib"))),
                 ("device", meta.get("device")),
                 ("tools", "%s, %s" % (meta.get("fio"), meta.get("qemu"))),
                 ("mode", "%s: ramp %s s + %s s per steady point%s" % (
                     "QUICK" if meta.get("quick") else "full", meta.get("ramp"), meta.get("runtime"),
                     "; fio on guest CPUs %s only" % meta["fio_cpus"] if meta.get("fio_cpus") else "")),
                 ("host load (1-min avg) during the run", "min %s, mean %s, max %s (%d samples)%s" % (
                     res["host_load_1min"]["min"],
                     "%.2f" % res["host_load_1min"]["mean"] if loads else None,
                     res["host_load_1min"]["max"], len(loads),
                     "; waited for load < %s: %s" % (host.get("max_load"), host.get("load_wait"))
                     if host.get("max_load") else "")),
                 ("wall time", "%s s (VM run %s s)" % (host.get("total_s"), host.get("vm_s")))):
        md.append("| %s | %s |" % (k, v))
    md.append("")
    md.append("## Results")
    md.append("")
    md.append("| workload | image kind | unit | raw | dm-qcow2 | qemu-nbd | vduse | dm-qcow2:raw | dm-qcow2:qemu-nbd |")
    md.append("|---|---|---|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        v = r["values"]
        md.append("| %s | %s | %s | %s%s | %s | %s | %s | %s | %s |" % (
            r["workload_label"], r["label"], r["unit"], fmt_val(v["raw"], r["unit"]),
            " †" if r["raw_from"] else "", fmt_val(v["qcow2"], r["unit"]),
            fmt_val(v["nbd"], r["unit"]) if meta.get("have_nbd", 1) else "skipped",
            fmt_val(v["vduse"], r["unit"]) if meta.get("have_vduse", 1) else "skipped",
            fmt_ratio(r["qcow2_raw"]) + (" (%s-%s, %d runs)" % (
                fmt_ratio(min(r["qcow2_raw_pairs"])), fmt_ratio(max(r["qcow2_raw_pairs"])),
                len(r["qcow2_raw_pairs"])) if r["qcow2_raw_pairs"] else ""),
            fmt_ratio(r["qcow2_nbd"])))
    md.append("")
    if any(r["qcow2_raw_pairs"] for r in rows):
        md.append("Where a ratio shows a range, raw and dm-qcow2 ran %s times each, alternating "
                  "(BENCH_REPEAT): the values are medians, the ratio is the median of the "
                  "ratios of each raw/dm-qcow2 pair, the range their lowest and highest; "
                  "dm-qcow2:qemu-nbd uses the median." % meta.get("repeat", "?"))
        md.append("")
    md.append("raw is dm-linear over the scratch device (the same kind of device as the image's): "
              "for (a) over its first 1 GiB, written once before, so that raw reads and overwrites data "
              "as the image does; for (b) over unwritten (discarded) space; for (f) over the %s image's "
              "device, reading; for (e) over the first 1 GiB written as for (a), next to each chain.  "
              "† raw measured once per workload, with (a) (for (b) with extended L2: with "
              "(b)): the image kind does not change what raw does." % ssz)
    md.append("")
    if any(f["floor"] for f in floors):
        md.append("### (b), (c) against the device I/O they need")
        md.append("")
        md.append("| workload | image kind | raw doing that I/O | its rate | dm-qcow2 | qemu-nbd | vduse "
                  "| dm-qcow2 : it | qemu-nbd : it | vduse : it |")
        md.append("|---|---|---|--:|--:|--:|--:|--:|--:|--:|")
        for f in floors:
            v = f["values"]
            md.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                f["workload_label"], f["label"], f["floor_workload"], fmt_val(f["floor"], "IOPS"),
                fmt_val(v["qcow2"], "IOPS"), fmt_val(v["nbd"], "IOPS"), fmt_val(v["vduse"], "IOPS"),
                fmt_ratio(f["ratios"]["qcow2"]), fmt_ratio(f["ratios"]["nbd"]),
                fmt_ratio(f["ratios"]["vduse"])))
        md.append("")
        md.append("Without extended L2 and without write-zeroes on the device, a 4k write into a new "
                  "cluster of 64 KiB writes 64 KiB (its data and the zeros around it; every backend "
                  "does), and a copy-on-write reads the 64 KiB backing cluster and writes 64 KiB.  "
                  "\"raw doing that I/O\" is dm-linear running exactly that with fio over the first 3 GiB "
                  "of the scratch device, discarded before (so that most writes, not all, land in "
                  "unwritten space), at the same queue depth and for as many writes "
                  "(for (c) a 50/50 mix of 64 KiB random reads and writes, two I/Os per write, so "
                  "its rate is half fio's IOPS); the reads of (c) come from the backing device "
                  "there, from the same discarded space here.  A backend above 1 overlaps or saves some of "
                  "that I/O (e.g. dm-qcow2 zeroing ahead where the device has write-zeroes, "
                  "in which case only 4 KiB are written per write, or reading backing clusters "
                  "while earlier copies are written); a backend that does this I/O one write at a "
                  "time cannot beat qemu-nbd by more than the rate here divided by qemu-nbd's.")
        md.append("")
    fsyncs = [r for r in rows if r["kind"] == "fsync"]
    if fsyncs:
        last = {key(p): p for p in points}
        md.append("### (h) fsync: device requests per write")
        md.append("")
        md.append("| workload | image kind | %s |" % " | ".join(
            "%s writes/s: KiB written / flushes per write" % BACKEND_NAMES[b] for b in BACKENDS))
        md.append("|---|---|%s" % ("--:|" * len(BACKENDS)))
        for r in fsyncs:
            cells = []
            for b in BACKENDS:
                d = devreqs(last.get(("fsync", r["variant"], r["workload"], b)))
                v = fmt_val(r["values"][b], "IOPS")
                cells.append("%s: %.1f / %.2f" % (v, d["kib_written"], d["flushes"])
                             if d and d.get("kib_written") is not None else v)
            md.append("| %s | %s | %s |" % (r["workload_label"], r["label"], " | ".join(cells)))
        md.append("")
        md.append("Each write is followed by an fsync of the device (fio `--fsync=1`, QD1 per "
                  "writer; with 4 writers fio's `--numjobs=4`, one region).  The device has a "
                  "volatile write cache (%s), so each fsync reaches the backend as a flush.  "
                  "KiB written (data and metadata; the empty write requests that carry a flush "
                  "write nothing) and flush requests are those the device completed during "
                  "the measured run (for qemu-nbd and vduse, what QEMU sent it), divided by "
                  "fio's writes: "
                  "a backend that lets one flush serve several writers sends fewer than one "
                  "flush per write with 4 writers." % (
                      "a null_blk device of its own, configfs `cache_size=64` (MiB)"
                      if meta.get("device_kind") == "nullblk" else "the virtio disk's"))
        md.append("")
    if chains:
        md.append("### (e) chains against the chain of 1 layer (dm-qcow2)")
        md.append("")
        md.append("| workload | layers | direct | through raw |")
        md.append("|---|--:|--:|--:|")
        for x in chains:
            md.append("| %s | %d | %s | %s |" % (x["workload_label"], x["layers"],
                                                fmt_ratio(x["direct"]), fmt_ratio(x["through_raw"])))
        md.append("")
        md.append("direct: dm-qcow2's IOPS on the chain over its IOPS on the chain of 1 layer, "
                  "measured minutes apart.  through raw: the chain's dm-qcow2:raw over the "
                  "1-layer chain's dm-qcow2:raw, each chain measured alternately with raw "
                  "(dm-linear over the scratch device's written first 1 GiB) next to it, so that "
                  "the host's speed between the chains cancels out (to the extent that it moves "
                  "raw and dm-qcow2 alike).")
        md.append("")
    if have_curve:
        md.append("### (f) dm-qcow2 cache_size curve: %s image, 4k randread QD32" % ssz)
        md.append("")
        md.append("| cache_size | dm-qcow2 IOPS | slice miss % during the run | metadata reads per I/O | cache used/slots |")
        md.append("|--:|--:|--:|--:|--:|")
        for x in c:
            cn = x["counters"] or {}
            md.append("| %s%s | %s | %s | %s | %s |" % (
                human_bytes(x["cache_size"]), " (default)" if x["default"] else "",
                fmt_val(x["iops"], "IOPS"),
                "%.1f" % cn["miss_pct"] if cn else "", "%.3f" % cn["md_per_io"]
                if cn and cn.get("md_per_io") is not None else "", cn.get("cache", "")))
        md.append("")
        l2 = SPARSE_SIZE[0] >> 13		# 8 bytes of L2 entry per 64 KiB cluster
        md.append("Same image and workload: %s.  The L2 tables of this image are %s "
                  "(%d slices of 4 KiB); QEMU's default L2 cache is at most 32 MiB of "
                  "whole 64 KiB tables." % (", ".join(
                      "%s %s IOPS" % (BACKEND_NAMES[b], fmt_val(v, "IOPS")) for b, v in sorted(refs.items())),
                      human_bytes(l2).replace("M", " MiB"), l2 >> 12))
        md.append("")
    if log["open"]:
        md.append("### (g) Open cost")
        md.append("")
        md.append("| image | layers | `dmsetup create --noudevsync` ms (median of 3) | `dmsetup create` ms (udev sync) "
                  "| open_reads | metadata_reads after load | `qemu-img info` ms | qemu-img info reads on the image devices "
                  "| strace -c (all fds) pread64 / read / preadv |")
        md.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
        for x in log["open"]:
            sc = x.get("qemu_img_info_syscalls") or {}
            md.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                x["label"], x.get("layers") or "", x["create_ms"], x.get("create_udev_ms", ""),
                nz(x.get("open_reads")), nz(x.get("metadata_reads")), nz(x.get("qemu_img_info_ms")),
                nz(x.get("qemu_img_info_image_reads")),
                "%s / %s / %s" % (sc.get("pread64"), sc.get("read"), sc.get("preadv")) if sc else ""))
        md.append("")
        md.append("open_reads is field 9 after the target name in `dmsetup status` (the table is "
                  "loaded read-only: no refcount table read).  The `dmsetup create` times include "
                  "the exec of dmsetup under TCG; the dm-linear row is that floor.  `qemu-img info` runs with "
                  "`--backing-chain`; its reads are counted with `strace -f -y` (reads on "
                  "/dev/nullb*, /dev/vd*, /dev/loop*) and `strace -c -f` (every file, "
                  "including shared libraries and /proc).")
        md.append("")
    md.append("### dm-qcow2 counters per point (during the measured run, after the warm-up)")
    md.append("")
    md.append("| workload | image kind | slice lookups | miss % | metadata reads | per I/O "
              "| cache used/slots after | device requests per I/O: reads / writes / flushes "
              "| raw's | in map() | allocations: map() / worker | copies | commits (ms) |")
    md.append("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        cn = r["qcow2_counters"]
        if not cn:
            continue
        dq, dr = r.get("qcow2_dev"), r.get("raw_dev")
        md.append("| %s | %s | %d | %.2f | %d | %s | %s | %s | %s | %s |" % (
            r["workload_label"], r["label"], cn["hits"] + cn["misses"], cn["miss_pct"],
            cn["metadata_reads"], "%.3f" % cn["md_per_io"] if cn["md_per_io"] is not None else "",
            cn["cache"],
            "%.2f: %.2f / %.2f / %.3f" % (dq["total"], dq["reads"], dq["writes"], dq["flushes"])
            if dq else "",
            "%.2f" % dr["total"] if dr else "", stats_cells(cn)))
    md.append("")
    md.append("In map(): the share of fio's I/Os whose bio was remapped, completed or "
              "allocated in the submitting context, without a worker (map_reads + map_writes "
              "of the `stats` message; a bio split at a cluster boundary counts once per part).  "
              "Allocations, copies (copy-on-write of a cluster) and commits with their total "
              "time: counters of the same message (qcow2.rst, \"Messages\").")
    md.append("")
    md.append("Device requests: completed by the block devices under dm-qcow2 (the image's, and "
              "the backing layers' in a chain) and under raw's dm-linear during the measured run "
              "(/sys/class/block/*/stat: reads, writes including write-zeroes, discards, "
              "flushes), divided by fio's I/Os; the device may merge or split requests.")
    md.append("")
    md.append("## How it was measured")
    md.append("")
    md.append("- %s, `--direct=1 --ioengine=libaio --numjobs=1 --norandommap --randrepeat=1` "
              "(the same offsets for every backend); 4k random at QD1 and QD32, 1M sequential at QD4; "
              "region = the image's virtual size (1 GiB; 64 GiB for (b), %s for (f), see the notes "
              "for (d))." % (meta.get("fio", ""), ssz))
    md.append("- Steady points: a %s s warm-up run (other random offsets), then the measured "
              "`--time_based --runtime=%s` run.  Each backend is "
              "attached for the point and detached after it; backends of a workload run back to "
              "back (raw, dm-qcow2, qemu-nbd, vduse) so that drift of the shared host hits them alike."
              % (meta.get("ramp"), meta.get("runtime")))
    md.append("- Allocating points ((b), (c)): a fresh image per point, no ramp (every write of the run "
              "allocates, there is no steady state), at most %s 4k writes / %s 1M writes for (b) and "
              "%s writes for (c), and at most %s s.  (b) is a 64 GiB image (1 Mi clusters), so random "
              "4k writes rarely meet a cluster twice; (c) is a 1 GiB overlay over the (a) image "
              "(16 Ki clusters): about %d%% of the writes copy a cluster, the rest land in a cluster "
              "copied earlier in the run.  In (b) raw writes to unwritten (discarded) space, as the images do."
              % (meta.get("cap_empty_4k"), meta.get("cap_empty_1m"), meta.get("cap_cow"),
                 meta.get("runtime"), cow_fraction(meta.get("cap_cow") or 0, 16384)))
    md.append("- Images: 64 KiB clusters, qcow2 v3, refcount_bits=16, made by qemu-img %s.  "
              "(a) `preallocation=metadata`, then every byte written by qemu-io.  (d) converted with "
              "`qemu-img convert -c` (zlib) on the host from 50%%-compressible fio data.  "
              "(e) empty overlays in guest tmpfs files on read-only loop devices over the (a) image; "
              "every backend maps the chain read-only.  (f) %s with `preallocation=metadata`: "
              "every cluster is mapped to a host cluster that was never written (reads return the "
              "device's zeros), so the L2 working set is all of the L2 tables; the brief's "
              "'data at a stride' taken to a stride of one cluster, which fits in guest memory."
              % (meta.get("qemu", "").replace("qemu-img version ", ""), ssz))
    md.append("- qemu-nbd: `qemu-nbd -c /dev/nbd0 -f qcow2 --cache=none --aio=native` (one connection, "
              "default options); vduse: `qemu-storage-daemon --blockdev` qcow2 over host_device with "
              "`cache.direct=on,aio=native` (every backing layer explicit), `--export type=vduse-blk` "
              "(default 1 queue of 256), `vdpa dev add`.  Outside (h), writes are not followed by a "
              "flush in any column: dm-qcow2 and QEMU both keep metadata in memory until a flush.")
    md.append("- (h): a 1 GiB image with `preallocation=metadata` (writes overwrite mapped "
              "clusters; raw writes the same device's first 1 GiB) for %s s per point, and a "
              "fresh 64 GiB image per point (every write allocates) for at most %s writes "
              "(with 4 writers, a quarter each) and %s s; the device is discarded before "
              "each point." % (meta.get("runtime"), meta.get("cap_fsync"), meta.get("runtime")))
    md.append("- Before the first point the guest's free memory is touched once and freed "
              "(bench-guest.sh, warm_memory): under TCG the first write to a page of guest memory "
              "costs a page fault on the host, which would otherwise fall on the first points that "
              "store much data in null_blk's memory.")
    md.append("- dm-qcow2 images used for writes were checked with `qemu-img check` after each run "
              "(see notes).")
    md.append("")
    md.append("## Notes from the run")
    md.append("")
    for n in log["notes"]:
        md.append("- %s" % n)
    if missing:
        md.append("- **%d planned point(s) without a number**: %s" % (len(missing), ", ".join(
            "%s/%s/%s/%s" % key(p) for p in missing)))
    if log["done"] is None:
        md.append("- **the guest did not finish** (no BENCH-DONE line): see vm/output.log, vm/console.log")
    else:
        md.append("- guest time per kind (s): %s; guest memory at the end: %s" % (
            ", ".join("%s %.0f" % (k, v / 1000.0) for k, v in (log["done"].get("kind_ms") or {}).items()),
            log["done"].get("mem")))
    md.append("")
    md.append("Charts: chart.svg (all rows, relative to raw)%s." % (
        ", cache-curve.svg" if have_curve else ""))
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    return 1 if missing or log["done"] is None else 0


def cow_fraction(cap, clusters):
    """Expected share of random writes that hit a not yet copied cluster."""
    if not cap:
        return 0
    x = cap / clusters
    return round(100 * (1 - math.exp(-x)) / x)


if __name__ == "__main__":
    sys.exit(main())
