#!/usr/bin/env python3
"""The no-cliffs and mixed-precision figures from fusednorm_bench JSON files (one per run).

    scripts/cliffs.py RUN.json [RUN.json ...]

Every ratio is taken within one run, then the median over the runs is printed. A ratio "x naive" is the baseline's
time over FusedNorm's (> 1: FusedNorm faster). FusedNorm rows: the hand schedule, out of place, on the best
instruction set the run has for the row's dtype.
  1. hand rows below 1.0x the naive loop, oneDNN of the same layout or PyTorch of the same layout;
  2. the figures the no-cliffs issue names (copy ceiling fractions, LayerNorm/RMSNorm backward against oneDNN's
     LayerNorm backward, the small call);
  3. training and backward rows where an autoscheduled kernel was faster than the hand schedule;
  4. bfloat16 and float16 against float32 (fraction of the copy ceiling, ResNet-50 shapes) and against oneDNN.
Standard library only.
"""
import json
import statistics
import sys

ISAS = ["avx512", "avx2", "sse41", "neon"]


def key(row, layout=None):
    return (row["shape_name"], row["op"], row["direction"], row.get("epilogue", "none"), row.get("dtype", "float32"),
            layout or row.get("layout"))


def index_run(rows):
    """{key: {impl: row}} with the problem's layout in the key (oneDNN rows carry their own layout)."""
    by_key = {}
    for row in rows:
        if row.get("kind") == "ceiling" or not row.get("ms") or row.get("error"):
            continue
        impl = row["impl"]
        layout = row.get("layout")
        if impl.startswith("onednn/"):
            layout = impl.split("/", 1)[1]
            if layout not in ("nchw", "nhwc", "rows"):
                continue  # blocked layouts: not the same layout as any FusedNorm row
        by_key.setdefault(key(row, layout), {})[impl] = row
    return by_key


def hand_impl(impls):
    for isa in ISAS:
        if f"fusednorm/hand/{isa}" in impls:
            return f"fusednorm/hand/{isa}"
    return None


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value):
    return "-" if value is None else f"{value:.2f}"


def per_run(runs, fn):
    """{key: [value per run]} of fn(impls) over each run's hand rows."""
    out = {}
    for run in runs:
        for k, impls in run.items():
            hand = hand_impl(impls)
            if hand is None:
                continue
            out.setdefault(k, []).append(fn(impls, impls[hand]))
    return out


def speedup(impls, hand, impl):
    other = impls.get(impl)
    return other["ms"] / hand["ms"] if other else None


def main(argv):
    if not argv:
        print(__doc__)
        return 2
    docs = [json.load(open(path)) for path in argv]
    runs = [index_run(doc["rows"]) for doc in docs]
    print(f"{len(docs)} run(s); machine: {docs[0]['machine'].get('cpu')}, {docs[0]['machine'].get('date')}")

    # 1. Hand rows below a baseline of the same layout.
    print("\n## Hand rows below 1.0x a baseline (medians of the runs' ratios)\n")
    print("| shape | op direction layout dtype | hand ms | x naive | x oneDNN | x PyTorch | x ceiling |")
    print("|---|---|---|---|---|---|---|")
    ratios = per_run(runs, lambda impls, hand: (
        hand["ms"], speedup(impls, hand, "naive"), speedup(impls, hand, f"onednn/{hand['layout']}"),
        speedup(impls, hand, f"pytorch/{hand['layout']}"), hand.get("ratio_to_ceiling")))
    below = 0
    total = 0
    for k in sorted(ratios):
        columns = [median_or_none([r[i] for r in ratios[k]]) for i in range(5)]
        total += 1
        if any(c is not None and c < 1.0 for c in columns[1:4]):
            below += 1
            shape, op, direction, epilogue, dtype, layout = k
            name = op if epilogue == "none" else op
            print(f"| {shape} | {name} {direction} {layout} {dtype} | {columns[0]:.3f} | "
                  + " | ".join(fmt(c) for c in columns[1:]) + " |")
    print(f"\n{below} of {total} hand rows below at least one baseline.")

    # 2. The named figures.
    print("\n## Named figures (medians of the runs)\n")

    def figure(label, shape, op, direction, layout, measure, target, dtype="float32"):
        k = (shape, op, direction, "none", dtype, layout)
        values = []
        for run in runs:
            impls = run.get(k)
            hand = impls and hand_impl(impls)
            if not hand:
                continue
            if measure == "ceiling":
                values.append(impls[hand].get("ratio_to_ceiling"))
            else:
                # oneDNN 2.6 has no RMSNorm: LayerNorm's row of the same shape stands for it.
                baseline = run.get((shape, "layer_norm", direction, "none", dtype, layout), {})
                values.append(speedup(impls if op != "rms_norm" else baseline, impls[hand], measure))
        value = median_or_none(values)
        verdict = "-" if value is None else ("met" if value >= target else "NOT met")
        print(f"- {label}: {fmt(value)} (target {target}) {verdict}")

    for direction in ("forward_training", "backward"):
        for layout in ("nchw", "nhwc"):
            figure(f"BatchNorm1d [8192, 1024] {direction} {layout} x ceiling", "mlp.bn1d", "batch_norm", direction,
                   layout, "ceiling", 0.5)
    for shape in ("transformer.8192x1024", "transformer.4096x4096"):
        for op in ("layer_norm", "rms_norm"):
            figure(f"{op} backward {shape} x oneDNN LayerNorm", shape, op, "backward", "rows", "onednn/rows", 1.2)
            figure(f"{op} backward {shape} x ceiling", shape, op, "backward", "rows", "ceiling", 0.5)
    for direction in ("forward_training", "backward"):
        figure(f"GroupNorm NHWC {direction} x ceiling", "unet.n8_c320_64x64", "group_norm", direction, "nhwc",
               "ceiling", 0.45)
    for doc_index, doc in enumerate(docs):
        for call in doc.get("small_calls", []):
            print(f"  run {doc_index + 1}: small call {call['case']}: median {call['median_us']:.1f} us, "
                  f"min {call['min_us']:.1f} us (target {call.get('target_us')})")

    # 3. Autoscheduled kernels ahead of the hand schedule.
    print("\n## Training and backward rows where an autoscheduler was faster (median ratio hand / auto > 1)\n")
    auto = {}
    for run in runs:
        for k, impls in run.items():
            hand = hand_impl(impls)
            if hand is None or k[2] not in ("forward_training", "backward"):
                continue
            for impl, row in impls.items():
                if impl.startswith("fusednorm/") and "/hand/" not in impl and not row.get("inplace"):
                    auto.setdefault((k, impl), []).append(impls[hand]["ms"] / row["ms"])
    slower = [(k, impl, statistics.median(v)) for (k, impl), v in auto.items() if statistics.median(v) > 1.0]
    for k, impl, ratio in sorted(slower):
        print(f"- {k[0]} {k[1]} {k[2]} {k[5]}: {impl} {ratio:.2f}x faster")
    print(f"\n{len(slower)} of {len(auto)} comparisons.")

    # 4. 16-bit storage.
    print("\n## 16-bit rows (ResNet-50 BatchNorm: medians over the shapes, then over the runs)\n")
    for dtype in ("bfloat16", "float16"):
        for direction in ("forward_training", "backward"):
            for layout in ("nchw", "nhwc"):
                fractions, versus = [], []
                for run in runs:
                    f_run, v_run = [], []
                    for k, impls in run.items():
                        shape, op, d, epilogue, dt, lay = k
                        if not (shape.startswith("resnet50.") and op == "batch_norm" and d == direction
                                and epilogue == "none" and lay == layout and dt == dtype):
                            continue
                        hand = hand_impl(impls)
                        f32 = run.get((shape, op, d, epilogue, "float32", lay), {})
                        f32_hand = hand_impl(f32)
                        if hand and f32_hand and impls[hand].get("ratio_to_copy_nt"):
                            f_run.append(impls[hand]["ratio_to_copy_nt"] / f32[f32_hand]["ratio_to_copy_nt"])
                        if hand:
                            v_run.append(speedup(impls, impls[hand], f"onednn/{layout}"))
                    fractions.append(median_or_none(f_run))
                    versus.append(median_or_none(v_run))
                print(f"- {dtype} BatchNorm {direction} {layout}: x float32's ceiling fraction "
                      f"{fmt(median_or_none(fractions))} (target 0.9), x oneDNN {dtype} "
                      f"{fmt(median_or_none(versus))} (target 1.2)")
        for shape in ("transformer.8192x1024", "transformer.4096x4096"):
            for direction in ("forward_training", "backward"):
                values = []
                for run in runs:
                    impls = run.get((shape, "layer_norm", direction, "none", dtype, "rows"), {})
                    hand = hand_impl(impls)
                    if hand:
                        values.append(speedup(impls, impls[hand], "onednn/rows"))
                print(f"- {dtype} LayerNorm {direction} {shape}: x oneDNN {fmt(median_or_none(values))} (target 1.2)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
