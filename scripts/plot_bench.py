#!/usr/bin/env python3
"""Plots fusednorm_bench's JSON rows: one PNG per kernel (op x direction x layout).

x: the shapes the kernel was timed on, in the run's order; y: GB/s over the copy ceiling of the same shape
(ratio_to_ceiling, 1 = as fast as the faster copy of a tensor that size). One series per FusedNorm variant
(the hand schedule, in place, each autoscheduler) and per baseline (naive, oneDNN on the plain layout,
oneDNN on its blocked layout, which is drawn on both plain layouts' plots as it is in the table's x onednn, and
PyTorch on the plain layout, kind "framework").
Rows that were not timed (an autoscheduled kernel or PyTorch refused the shape, or a baseline's result was wrong)
have no point; the legend counts them.

  .venv/bin/python scripts/plot_bench.py build/release/bench/results.json --out build/release/bench/plots

`make bench` runs it after the benchmark. Headless: matplotlib's Agg backend, no display needed.
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

PLAIN_LAYOUTS = ("nchw", "nhwc", "rows")
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


def kernels(rows):
    """{(op, direction, layout): [rows]}, the layout of a case's plain layout; blocked library rows join every
    plain layout of their op and direction that has rows."""
    result = {}
    for row in rows:
        if row["kind"] == "ceiling" or row["layout"] not in PLAIN_LAYOUTS:
            continue
        result.setdefault((row["op"], row["direction"], row["layout"]), []).append(row)
    for row in rows:
        if row["kind"] == "library" and row["layout"] not in PLAIN_LAYOUTS:
            for (op, direction, layout), members in result.items():
                if op == row["op"] and direction == row["direction"] and layout in ("nchw", "nhwc"):
                    members.append(row)
    return result


def plot_kernel(key, members, machine, settings, path):
    op, direction, layout = key
    shapes = []
    for row in members:
        if row["shape_name"] not in shapes:
            shapes.append(row["shape_name"])
    by_series = {}
    for row in members:
        by_series.setdefault(series_name(row), {})[row["shape_name"]] = row

    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(shapes) + 3.0), 4.8))
    for name, (style, marker) in SERIES_STYLE.items():
        points = by_series.get(name)
        if not points:
            continue
        xs, ys, refused, wrong = [], [], 0, 0
        for i, shape in enumerate(shapes):
            row = points.get(shape)
            if row is None:
                continue
            if row["ratio_to_ceiling"] is None:
                if (row.get("error") or "").startswith("wrong result: "):
                    wrong += 1
                else:
                    refused += 1
                continue
            xs.append(i)
            ys.append(row["ratio_to_ceiling"])
        label = name
        impl = next(iter(points.values()))["impl"]
        if name in ("oneDNN plain", "oneDNN blocked", "PyTorch"):
            label += f" ({impl.split('/', 1)[1]})"
        if refused:
            label += f", refused {refused} shape(s)"
        if wrong:
            label += f", wrong on {wrong} shape(s)"
        ax.plot(xs, ys, linestyle=style, marker=marker, label=label)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xticks(range(len(shapes)))
    ax.set_xticklabels(shapes, rotation=20, ha="right")
    ax.set_xlim(-0.5, len(shapes) - 0.5)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("GB/s over the copy ceiling (higher is better)")
    ax.set_title(f"{op} {direction} {layout}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    note = f"{machine.get('cpu', '?')}, {settings.get('threads', '?')} threads, {machine.get('date', '')}"
    if settings.get("quick"):
        note += ", --quick"
    fig.text(0.01, 0.01, note, fontsize="x-small", color="grey")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("json", help="the benchmark's JSON rows (fusednorm_bench --json)")
    parser.add_argument("--out", default=None, help="folder for the PNGs (default: plots/ beside the JSON)")
    args = parser.parse_args(argv)
    with open(args.json) as f:
        results = json.load(f)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.json)), "plots")
    os.makedirs(out, exist_ok=True)
    groups = kernels(results["rows"])
    if not groups:
        print(f"plot_bench: {args.json} has no kernel rows: no plots", file=sys.stderr)
        return 1
    written = []
    for key in sorted(groups):
        path = os.path.join(out, "_".join(key) + ".png")
        plot_kernel(key, groups[key], results.get("machine", {}), results.get("settings", {}), path)
        written.append(path)
    print(f"Plots: {len(written)} PNG files (one per op, direction and layout) in {os.path.abspath(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
