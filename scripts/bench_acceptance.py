#!/usr/bin/env python3
"""The schedule lab's acceptance figures from fusednorm_bench JSON files (one per run).

    scripts/bench_acceptance.py RUN.json [RUN.json ...]

For each criterion: the median over the ResNet-50 batch-32 shapes of the ratio, in each run, then the best run
(the issue asks for the best of three runs, each ratio taken within its own run). Ratios:
  - "x copy_nt": the row's GB/s over the non-temporal copy's, same shape, same run (ratio_to_copy_nt);
  - "x onednn/<layout>": oneDNN's time over FusedNorm's (> 1: FusedNorm faster), same shape, same run.
Then, per ResNet-50 row, the autoscheduled variants that ran faster than the hand schedule.
FusedNorm rows are the hand schedule, affine, out of place, on the best instruction set of the run.
Standard library only.
"""
import json
import statistics
import sys

TARGETS = [
    # (label, op, direction, layout, measure, target)
    ("forward training NCHW", "forward_training", "nchw", "copy_nt", 0.60),
    ("forward training NHWC", "forward_training", "nhwc", "copy_nt", 0.45),
    ("forward training NCHW vs oneDNN nChw16c", "forward_training", "nchw", "onednn/nChw16c", 1.1),
    ("forward training NCHW vs oneDNN nchw", "forward_training", "nchw", "onednn/nchw", 3.0),
    ("backward NCHW", "backward", "nchw", "copy_nt", 0.65),
    ("backward NHWC", "backward", "nhwc", "copy_nt", 0.45),
    ("inference NCHW (out of place)", "forward_inference", "nchw", "copy_nt", 0.64),
    ("inference NHWC (out of place)", "forward_inference", "nhwc", "copy_nt", 0.64),
    ("inference NCHW in place", "forward_inference", "nchw", "copy_nt/inplace", None),
    ("inference NHWC in place", "forward_inference", "nhwc", "copy_nt/inplace", None),
    ("forward training NCHW in place", "forward_training", "nchw", "copy_nt/inplace", None),
]


def is_resnet(row):
    return (row.get("shape_name") or "").startswith("resnet50.") and row.get("op") == "batch_norm" \
        and row.get("epilogue", "none") == "none" and row.get("dtype", "float32") == "float32"


def hand_row(rows, shape, direction, layout, inplace):
    for row in rows:
        if (is_resnet(row) and row["shape_name"] == shape and row.get("direction") == direction
                and row.get("layout") == layout and row.get("kind") == "fusednorm"
                and row.get("schedule") == "hand" and bool(row.get("inplace")) == inplace and row.get("ms")):
            return row
    return None


def library_row(rows, shape, direction, impl):
    for row in rows:
        if (is_resnet(row) and row["shape_name"] == shape and row.get("direction") == direction
                and row.get("impl") == impl and row.get("ms")):
            return row
    return None


def run_medians(rows):
    shapes = sorted({row["shape_name"] for row in rows if is_resnet(row)})
    medians = {}
    for label, direction, layout, measure, _ in TARGETS:
        values = []
        for shape in shapes:
            inplace = measure.endswith("/inplace")
            row = hand_row(rows, shape, direction, layout, inplace)
            if row is None:
                continue
            if measure.startswith("copy_nt"):
                values.append(row["ratio_to_copy_nt"])
            else:
                library = library_row(rows, shape, direction, measure)
                if library is not None:
                    values.append(library["ms"] / row["ms"])
        medians[label] = (statistics.median(values), len(values)) if values else (None, 0)
    return shapes, medians


def autoscheduler_wins(rows):
    wins = []
    for row in rows:
        if not is_resnet(row) or row.get("kind") != "fusednorm" or row.get("schedule") in (None, "hand"):
            continue
        if row.get("inplace") or not row.get("ms"):
            continue
        hand = hand_row(rows, row["shape_name"], row["direction"], row["layout"], False)
        if hand is not None and row["ms"] < hand["ms"]:
            wins.append((row["shape_name"], row["direction"], row["layout"], row["schedule"],
                         hand["ms"] / row["ms"], hand["impl"]))
    return wins


# Issue 16's 16-bit criteria: (label, op, shape prefix, direction, layout, measure, target). Measures: "x f32", the
# 16-bit row's fraction of the copy ceiling over the float32 row's (same shape, same run); "x onednn", oneDNN's
# row of the same dtype and layout, its time over FusedNorm's.
HALF_TARGETS = [
    ("BatchNorm forward training NCHW", "batch_norm", "resnet50.", "forward_training", "nchw", "x f32", 0.9),
    ("BatchNorm forward training NHWC", "batch_norm", "resnet50.", "forward_training", "nhwc", "x f32", 0.9),
    ("BatchNorm backward NCHW", "batch_norm", "resnet50.", "backward", "nchw", "x f32", 0.9),
    ("BatchNorm backward NHWC", "batch_norm", "resnet50.", "backward", "nhwc", "x f32", 0.9),
    ("BatchNorm forward training NCHW vs oneDNN", "batch_norm", "resnet50.", "forward_training", "nchw", "x onednn",
     1.2),
    ("BatchNorm forward training NHWC vs oneDNN", "batch_norm", "resnet50.", "forward_training", "nhwc", "x onednn",
     1.2),
    ("BatchNorm backward NCHW vs oneDNN", "batch_norm", "resnet50.", "backward", "nchw", "x onednn", 1.2),
    ("BatchNorm backward NHWC vs oneDNN", "batch_norm", "resnet50.", "backward", "nhwc", "x onednn", 1.2),
    ("LayerNorm forward training vs oneDNN", "layer_norm", "transformer.", "forward_training", "rows", "x onednn", 1.2),
    ("LayerNorm backward vs oneDNN", "layer_norm", "transformer.", "backward", "rows", "x onednn", 1.2),
    ("LayerNorm forward training", "layer_norm", "transformer.", "forward_training", "rows", "x f32", None),
    ("LayerNorm backward", "layer_norm", "transformer.", "backward", "rows", "x f32", None),
    ("RMSNorm forward training", "rms_norm", "transformer.", "forward_training", "rows", "x f32", None),
    ("RMSNorm backward", "rms_norm", "transformer.", "backward", "rows", "x f32", None),
    ("GroupNorm forward training NCHW", "group_norm", "unet.", "forward_training", "nchw", "x f32", None),
    ("GroupNorm backward NHWC", "group_norm", "unet.", "backward", "nhwc", "x f32", None),
]


def half_median(rows, dtype, op, prefix, direction, layout, measure):
    def find(kind, row_dtype, shape, impl=None):
        for row in rows:
            if (row.get("op") == op and row.get("dtype", "float32") == row_dtype and row.get("kind") == kind
                    and row["shape_name"] == shape and row.get("direction") == direction
                    and row.get("layout") == layout and not row.get("inplace") and row.get("ms")
                    and (impl is None or row.get("impl") == impl)
                    and (kind != "fusednorm" or row.get("schedule") == "hand")):
                return row
        return None
    shapes = sorted({row["shape_name"] for row in rows if row["shape_name"].startswith(prefix)})
    values = []
    for shape in shapes:
        half = find("fusednorm", dtype, shape)
        if half is None:
            continue
        if measure == "x f32":
            wide = find("fusednorm", "float32", shape)
            if wide is not None and wide.get("ratio_to_ceiling") and half.get("ratio_to_ceiling"):
                values.append(half["ratio_to_ceiling"] / wide["ratio_to_ceiling"])
        else:
            library = find("library", dtype, shape, f"onednn/{layout}")
            if library is not None:
                values.append(library["ms"] / half["ms"])
    return (statistics.median(values), len(values)) if values else (None, 0)


def print_half(runs):
    print("\n16-bit (issue 16): medians over the shapes of each run; x f32: the 16-bit row's fraction of the copy "
          "ceiling over the float32 row's; x onednn: oneDNN's time (same dtype and layout) over FusedNorm's")
    for dtype in ("bfloat16", "float16"):
        print(f"\n{dtype:56s} {'target':>7s} " + " ".join(f"{'run ' + str(i + 1):>7s}" for i in range(len(runs))))
        for label, op, prefix, direction, layout, measure, target in HALF_TARGETS:
            values = [half_median(data["rows"], dtype, op, prefix, direction, layout, measure)[0] for _, data in runs]
            cells = " ".join(f"{v:7.2f}" if v is not None else f"{'-':>7s}" for v in values)
            present = [v for v in values if v is not None]
            verdict = ("reported" if target is None else "no rows" if not present
                       else "meets" if max(present) >= target else "below")
            target_text = f"{target:.2f}" if target is not None else "-"
            print(f"{label + ' (' + measure + ')':56s} {target_text:>7s} {cells}  {verdict}")


def main(paths):
    if not paths:
        print(__doc__.strip())
        return 2
    runs = []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        runs.append((path, data))
        machine = data.get("machine", {})
        print(f"{path}: {machine.get('date', '?')}, {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, "
              f"threads {data.get('settings', {}).get('threads', '?')}")
    results = [run_medians(data["rows"]) for _, data in runs]
    print()
    header = f"{'criterion':44s} {'target':>7s} " + " ".join(f"{'run ' + str(i + 1):>7s}" for i in range(len(runs)))
    print(header + f" {'best':>7s}  verdict")
    for label, _, _, measure, target in TARGETS:
        values = [medians[label][0] for _, medians in results]
        present = [v for v in values if v is not None]
        best = max(present) if present else None
        unit = "x" if not measure.startswith("copy_nt") else ""
        cells = " ".join(f"{v:7.2f}" if v is not None else f"{'-':>7s}" for v in values)
        if target is None:
            verdict = "reported"
        elif best is None:
            verdict = "no rows"
        else:
            verdict = "meets" if best >= target else "below"
        target_text = f"{target:.2f}{unit}" if target is not None else "-"
        best_text = f"{best:7.2f}" if best is not None else f"{'-':>7s}"
        print(f"{label:44s} {target_text:>7s} {cells} {best_text}  {verdict}")
    print("\n(medians over the ResNet-50 shapes of each run; ratios to copy_nt, or oneDNN's time over FusedNorm's)")
    print_half(runs)
    for (path, data) in runs:
        wins = autoscheduler_wins(data["rows"])
        print(f"\n{path}: autoscheduled rows faster than the hand schedule ({len(wins)})")
        for shape, direction, layout, schedule, speedup, hand_impl in wins:
            print(f"  {shape:16s} {direction:17s} {layout:4s} {schedule:13s} {speedup:5.2f}x {hand_impl}'s speed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
