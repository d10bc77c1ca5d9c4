#!/usr/bin/env python3
"""Plots fusednorm_bench's JSON rows: one PNG per kernel (op x direction x layout).

x: the shapes the kernel was timed on, in the run's order; y: GB/s over the copy ceiling of the same shape
(ratio_to_ceiling, 1 = as fast as the faster copy of a tensor that size). Given several runs' JSON, each point
is the median over the runs, and its bar spans the runs' lowest and highest; with one run, the bar reaches up to
the fastest of the row's timed runs (ms_min). The y axis is logarithmic where one point is over
LOG_Y_SPREAD times another (a cache-resident row beside rows from memory), linear otherwise. One series per
FusedNorm variant (the hand schedule, in place, each autoscheduler) and per baseline (naive, oneDNN on the plain layout,
oneDNN on its blocked layout, which is drawn on both plain layouts' plots as it is in the table's x onednn, and
PyTorch on the plain layout, kind "framework").
Rows that were not timed (an autoscheduled kernel or PyTorch refused the shape, or a baseline's result was wrong)
have no point; the legend counts them.

  .venv/bin/python scripts/plot_bench.py build/release/bench/results.json --out build/release/bench/plots
  .venv/bin/python scripts/plot_bench.py run1.json run2.json run3.json --out plots   # medians and spread

`make bench` runs it after the benchmark. Headless: matplotlib's Agg backend, no display needed.
"""
import argparse
import json
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

PLAIN_LAYOUTS = ("nchw", "nhwc", "rows")
LOG_Y_SPREAD = 20
AUTOSCHEDULERS = ("Mullapudi2016", "Li2018", "Adams2019")
# Series in legend order: (label, line style, marker). FusedNorm solid, baselines dashed.
SERIES_STYLE = {
    "hand": ("-", "o"),
    "hand, in place": ("-", "s"),
    "Mullapudi2016": ("-", "^"),
    "Li2018": ("-", "v"),
    "Adams2019": ("-", "D"),
    "naive": ("--", "x"),
    "oneDNN plain": ("--", "P"),
    "oneDNN blocked": ("--", "*"),
    "PyTorch": ("--", "h"),
}


def series_name(row):
    """The series a row belongs to, or None for the copies."""
    if row["kind"] == "fusednorm":
        if row["schedule"] == "hand":
            return "hand, in place" if row["inplace"] else "hand"
        return row["schedule"]
    if row["kind"] == "baseline":
        return "naive"
    if row["kind"] == "library":
        return "oneDNN plain" if row["layout"] in PLAIN_LAYOUTS else "oneDNN blocked"
    if row["kind"] == "framework":
        return "PyTorch"
    return None


def op_of(row):
    """The row's op, with its dtype where that is not float32: "batch_norm_bfloat16"."""
    dtype = row.get("dtype", "float32")
    return row["op"] if dtype == "float32" else f"{row['op']}_{dtype}"


def kernels(rows):
    """{(op, direction, layout): [rows]}, the layout of a case's plain layout; blocked library rows join every
    plain layout of their op and direction that has rows."""
    result = {}
    for row in rows:
        if row["kind"] == "ceiling" or row["layout"] not in PLAIN_LAYOUTS:
            continue
        result.setdefault((op_of(row), row["direction"], row["layout"]), []).append(row)
    for row in rows:
        if row["kind"] == "library" and row["layout"] not in PLAIN_LAYOUTS:
            for (op, direction, layout), members in result.items():
                if op == op_of(row) and direction == row["direction"] and layout in ("nchw", "nhwc"):
                    members.append(row)
    return result


def row_key(row):
    """What identifies a row across runs."""
    return (op_of(row), row["direction"], row["layout"], row["shape_name"], row["impl"], row["inplace"])


def point(rows):
    """(median, low, high) of ratio_to_ceiling over the runs' rows of one series and shape, or None if no run
    timed it. One run: low is the median, high the ratio of the fastest timed run (ms_min)."""
    ratios = [r["ratio_to_ceiling"] for r in rows if r["ratio_to_ceiling"] is not None]
    if not ratios:
        return None
    if len(rows) == 1:
        r = rows[0]
        best = r["ratio_to_ceiling"] * r["ms"] / r["ms_min"] if r.get("ms_min") else r["ratio_to_ceiling"]
        return r["ratio_to_ceiling"], r["ratio_to_ceiling"], best
    return statistics.median(ratios), min(ratios), max(ratios)


def plot_kernel(key, members, runs, machine, settings, path):
    """members: the first run's rows of the kernel (they name the series and shapes); runs: every run's rows by
    row_key."""
    op, direction, layout = key
    shapes = []
    for row in members:
        if row["shape_name"] not in shapes:
            shapes.append(row["shape_name"])
    by_series = {}
    for row in members:
        by_series.setdefault(series_name(row), {})[row["shape_name"]] = row

    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(shapes) + 3.0), 4.8))
    all_ys = []
    for name, (style, marker) in SERIES_STYLE.items():
        points = by_series.get(name)
        if not points:
            continue
        xs, ys, lows, highs, refused, wrong = [], [], [], [], 0, 0
        for i, shape in enumerate(shapes):
            row = points.get(shape)
            if row is None:
                continue
            p = point([run[row_key(row)] for run in runs if row_key(row) in run])
            if p is None:
                if (row.get("error") or "").startswith("wrong result: "):
                    wrong += 1
                else:
                    refused += 1
                continue
            xs.append(i)
            ys.append(p[0])
            lows.append(p[0] - p[1])
            highs.append(p[2] - p[0])
        all_ys += ys
        label = name
        impl = next(iter(points.values()))["impl"]
        if name in ("oneDNN plain", "oneDNN blocked", "PyTorch"):
            label += f" ({impl.split('/', 1)[1]})"
        if refused:
            label += f", refused {refused} shape(s)"
        if wrong:
            label += f", wrong on {wrong} shape(s)"
        ax.errorbar(xs, ys, yerr=[lows, highs], linestyle=style, marker=marker, label=label, capsize=3)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xticks(range(len(shapes)))
    ax.set_xticklabels(shapes, rotation=20, ha="right")
    ax.set_xlim(-0.5, len(shapes) - 0.5)
    positive = [y for y in all_ys if y > 0]
    if positive and max(positive) > LOG_Y_SPREAD * min(positive):
        ax.set_yscale("log")
        ax.set_ylabel("GB/s over the copy ceiling (log; higher is better)")
    else:
        ax.set_ylim(bottom=0)
        ax.set_ylabel("GB/s over the copy ceiling (higher is better)")
    ax.set_title(f"{op} {direction} {layout}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    spread = (f"median of {len(runs)} runs, bars: lowest to highest run" if len(runs) > 1
              else "bars: median to the fastest timed run")
    note = f"{machine.get('cpu', '?')}, {settings.get('threads', '?')} threads, {machine.get('date', '')}; {spread}"
    if settings.get("quick"):
        note += ", --quick"
    fig.text(0.01, 0.01, note, fontsize="x-small", color="grey")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("json", nargs="+",
                        help="the benchmark's JSON rows (fusednorm_bench --json); several: one per run")
    parser.add_argument("--out", default=None, help="folder for the PNGs (default: plots/ beside the first JSON)")
    args = parser.parse_args(argv)
    results = []
    for path in args.json:
        with open(path) as f:
            results.append(json.load(f))
    first = results[0]
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.json[0])), "plots")
    os.makedirs(out, exist_ok=True)
    groups = kernels(first["rows"])
    if not groups:
        print(f"plot_bench: {args.json[0]} has no kernel rows: no plots", file=sys.stderr)
        return 1
    runs = [{row_key(row): row for row in r["rows"]} for r in results]
    written = []
    for key in sorted(groups):
        path = os.path.join(out, "_".join(key) + ".png")
        plot_kernel(key, groups[key], runs, first.get("machine", {}), first.get("settings", {}), path)
        written.append(path)
    print(f"Plots: {len(written)} PNG files (one per op, direction and layout, {len(runs)} run(s)) in "
          f"{os.path.abspath(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
