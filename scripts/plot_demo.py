#!/usr/bin/env python3
"""Draws and tabulates examples/train_mlp's experiment rows (one CSV row per run and epoch): `make demo`'s report.

  .venv/bin/python scripts/plot_demo.py build/release/demo/runs.csv --out build/release/demo

Writes one PNG per experiment (lr, init, placement, batch, eval, momentum), lr_curves.png (loss per epoch) and
report.md: one row per configuration with mean and standard deviation over the seeds of the final test accuracy,
the final train - test accuracy gap, the epoch-1 training loss, the epochs to 95% test accuracy and the runs that
diverged. docs/SEED_CLAIMS.md reads the tutorial's claims off these numbers. Headless (matplotlib's Agg backend).
"""
import argparse
import csv
import math
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

KEY = ("experiment", "norm", "placement", "learning_rate", "init_scale", "batch_size", "bn_momentum")
NORM_LABEL = {"none": "no norm", "batch": "BatchNorm", "group": "GroupNorm", "layer": "LayerNorm", "rms": "RMSNorm"}


def mean_std(values):
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def load(path):
    """{configuration key: {seed: [epoch rows in order]}}"""
    runs = defaultdict(lambda: defaultdict(list))
    with open(path) as f:
        for row in csv.DictReader(f):
            for name in ("learning_rate", "init_scale", "train_loss", "train_eval_loss", "train_accuracy", "test_loss",
                         "test_accuracy", "test_accuracy_batch_statistics"):
                row[name] = float(row[name])
            for name in ("batch_size", "seed", "epoch", "diverged"):
                row[name] = int(row[name])
            runs[tuple(row[k] for k in KEY)][row["seed"]].append(row)
    return runs


def summary(seeds):
    """Mean and spread over the seeds of one configuration."""
    finals = [rows[-1] for rows in seeds.values()]

    def epochs_to(target):
        # The first epoch whose test accuracy reaches target; a run that never does counts as epochs + 1.
        out = []
        for rows in seeds.values():
            hit = [r["epoch"] for r in rows if r["test_accuracy"] >= target]
            out.append(hit[0] if hit else rows[-1]["epoch"] + 1)
        return out

    return {
        "test": mean_std([r["test_accuracy"] for r in finals]),
        "test_batch": mean_std([r["test_accuracy_batch_statistics"] for r in finals]),
        "gap": mean_std([r["train_accuracy"] - r["test_accuracy"] for r in finals]),
        "test_loss": mean_std([r["test_loss"] for r in finals]),
        "loss1": mean_std([rows[0]["train_loss"] for rows in seeds.values()]),
        "to95": mean_std(epochs_to(0.95)),
        "diverged": sum(r["diverged"] for r in finals),
        "seeds": len(finals),
        "epochs": finals[0]["epoch"],
    }


def fmt(ms, digits=3):
    m, s = ms
    if math.isnan(m):
        return "-"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def configs(runs, experiment):
    return {k: v for k, v in runs.items() if k[0] == experiment}


def errorbar_plot(ax, xs, summaries, field, label, **style):
    ys = [s[field][0] for s in summaries]
    es = [s[field][1] for s in summaries]
    ax.errorbar(xs, ys, yerr=es, capsize=3, marker="o", label=label, **style)


def plot_sweep(runs, experiment, x_index, x_label, series_index, series_label, out, title, log_x=True, field="test"):
    groups = defaultdict(list)
    for key, seeds in configs(runs, experiment).items():
        groups[series_label(key[series_index])].append((key[x_index], summary(seeds)))
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in sorted(groups.items()):
        points.sort()
        errorbar_plot(ax, [p[0] for p in points], [p[1] for p in points], field, label)
    if log_x:
        ax.set_xscale("log", base=2 if experiment == "batch" else 10)
    ax.set_xlabel(x_label)
    ax.set_ylabel("final test accuracy (mean ± std over seeds)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_curves(runs, out):
    """Training loss per epoch, no norm vs BatchNorm, at two learning rates (experiment lr)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, lr in zip(axes, (0.1, 1.0)):
        for key, seeds in sorted(configs(runs, "lr").items()):
            if key[3] != lr:
                continue
            epochs = [r["epoch"] for r in next(iter(seeds.values()))]
            per_epoch = [mean_std([rows[i]["train_loss"] for rows in seeds.values()]) for i in range(len(epochs))]
            m = [p[0] for p in per_epoch]
            s = [p[1] for p in per_epoch]
            line, = ax.plot(epochs, m, marker=".", label=NORM_LABEL[key[1]])
            ax.fill_between(epochs, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)],
                            color=line.get_color(), alpha=0.2)
        ax.set_yscale("log")
        ax.set_title(f"learning rate {lr:g}")
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("mean training loss of the epoch (± std over seeds)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_bars(runs, experiment, label_of, out, title, fields=(("test", "final test accuracy"),)):
    items = sorted(configs(runs, experiment).items(), key=lambda kv: (kv[0][5], str(kv[0])))
    if not items:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(fields)
    for j, (field, name) in enumerate(fields):
        ss = [summary(seeds) for _, seeds in items]
        ax.bar([i + j * width for i in range(len(items))], [s[field][0] for s in ss], width,
               yerr=[s[field][1] for s in ss], capsize=3, label=name)
    ax.set_xticks([i + width * (len(fields) - 1) / 2 for i in range(len(items))])
    ax.set_xticklabels([label_of(k) for k, _ in items], fontsize=8)
    lows = [summary(seeds)[f][0] for _, seeds in items for f, _ in fields]
    lows = [v for v in lows if not math.isnan(v)]
    ax.set_ylim(max(0.0, min(lows) - 0.05), 1.0)
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def report(runs, path, images):
    lines = ["# train_mlp experiments", "",
             "Mean ± standard deviation over the seeds; final = after the last epoch. gap = train accuracy - test "
             "accuracy (evaluation mode). to 95% = the first epoch with test accuracy >= 0.95 (epochs + 1 when never). "
             "test (batch stats) = BatchNorm evaluated with each test chunk's own statistics, chunks of the training "
             "batch size.", ""]
    lines += [f"![{os.path.basename(i)}]({os.path.basename(i)})" for i in images if i]
    lines += ["", "| experiment | norm | placement | lr | init | batch | bn momentum | epochs | final test acc | "
              "test acc (batch stats) | gap | final test loss | epoch-1 train loss | to 95% | diverged |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, seeds in sorted(runs.items(), key=lambda kv: tuple(str(x) for x in kv[0][:3]) + kv[0][3:6]):
        s = summary(seeds)
        e, norm, placement, lr, init, batch, momentum = key
        lines.append(f"| {e} | {norm} | {placement} | {lr:g} | {init:g} | {batch} | {momentum or '-'} | {s['epochs']} "
                     f"| {fmt(s['test'])} | {fmt(s['test_batch'])} | {fmt(s['gap'])} | {fmt(s['test_loss'])} "
                     f"| {fmt(s['loss1'])} | {fmt(s['to95'], 1)} | {s['diverged']}/{s['seeds']} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    runs = load(args.csv)
    o = lambda name: os.path.join(args.out, name)  # noqa: E731
    norm_label = lambda n: NORM_LABEL[n]  # noqa: E731
    images = [
        plot_curves(runs, o("lr_curves.png")),
        plot_sweep(runs, "lr", 3, "learning rate", 1, norm_label, o("lr.png"),
                   "Learning rate: no norm vs BatchNorm (batch 64, 20 epochs)"),
        plot_sweep(runs, "init", 4, "initial weight scale (x PyTorch's default)", 1, norm_label, o("init.png"),
                   "Initialization: no norm vs BatchNorm (lr 0.1, 20 epochs)"),
        plot_bars(runs, "placement", lambda k: f"{k[2].replace('_', ' ')}\nlr {k[3]:g}", o("placement.png"),
                  "BatchNorm before vs after the ReLU (batch 64, 20 epochs)"),
        plot_sweep(runs, "batch", 5, "batch size (lr = 0.1 x batch / 64)", 1, norm_label, o("batch.png"),
                   "Small batches: each norm in BatchNorm's place (10 epochs)"),
        plot_bars(runs, "eval", lambda k: f"batch {k[5]}", o("eval.png"),
                  "BatchNorm evaluation: running vs batch statistics (10 epochs)",
                  fields=(("test", "running statistics"), ("test_batch", "batch statistics"))),
        plot_bars(runs, "momentum", lambda k: f"momentum {k[6]}\nbatch {k[5]}", o("momentum.png"),
                  "Running statistics: momentum 0.1 vs cumulative average (10 epochs)"),
    ]
    report(runs, o("report.md"), images)
    print(f"plot_demo: {o('report.md')} and {sum(1 for i in images if i)} plots in {args.out}")


if __name__ == "__main__":
    main()
