#!/usr/bin/env python3
"""Training curves of one or more Flip runs, as one PNG (what `flip plot` runs).

    scripts/plot-runs.py OUT.png RUN [RUN ...]

Reads each RUN/metrics.jsonl (its "epoch" rows) and draws, against the epoch: training and
test loss, training and test accuracy (the runs overlaid, labelled by their directory), and
Larq's flip_ratio of every quantized layer (one panel per run). Needs matplotlib.
"""
import json
import os
import sys


def epochs(run):
    path = os.path.join(run, "metrics.jsonl")
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                sys.exit(f"plot-runs: {path}:{n}: not JSON ({e})")
            if not isinstance(row, dict):
                sys.exit(f"plot-runs: {path}:{n}: not a JSON object")
            if row.get("kind") == "epoch":
                for key in ("epoch", "loss", "accuracy", "test_loss", "test_accuracy"):
                    value = row.get(key)
                    # null stands for a non-finite number; anything else must be a number.
                    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                        sys.exit(f"plot-runs: {path}:{n}: {key} must be a number, found {value!r}")
                if row.get("epoch") is None:
                    sys.exit(f"plot-runs: {path}:{n}: an epoch row without its epoch number")
                rows.append(row)
    if not rows:
        sys.exit(f"plot-runs: {path} has no epoch rows yet (is the first epoch finished?)")
    return rows


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, runs = sys.argv[1], sys.argv[2:]
    data = [(os.path.basename(os.path.normpath(r)) or r, epochs(r)) for r in runs]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    # Top row: loss and accuracy of every run; bottom row: each run's flip ratios.
    columns = max(2, len(data))
    fig = plt.figure(figsize=(5 * columns, 8))
    top = fig.add_gridspec(2, 2)
    bottom = fig.add_gridspec(2, columns)
    loss, acc = fig.add_subplot(top[0, 0]), fig.add_subplot(top[0, 1])
    for i, (name, rows) in enumerate(data):
        color = f"C{i}"
        x = [r["epoch"] for r in rows]
        loss.plot(x, [r["loss"] for r in rows], "-", color=color, marker="o", label=f"{name} train")
        loss.plot(x, [r["test_loss"] for r in rows], "--", color=color, marker="s", label=f"{name} test")
        acc.plot(x, [r["accuracy"] for r in rows], "-", color=color, marker="o", label=f"{name} train")
        acc.plot(x, [r["test_accuracy"] for r in rows], "--", color=color, marker="s", label=f"{name} test")
        flips = fig.add_subplot(bottom[1, i])
        layers = sorted({layer for r in rows for layer in r.get("flip_ratio", {})})
        for layer in layers:
            xs = [r["epoch"] for r in rows if layer in r.get("flip_ratio", {})]
            flips.plot(xs, [r["flip_ratio"][layer] for r in rows if layer in r.get("flip_ratio", {})], marker=".", label=layer)
        flips.set_title(f"{name}: flip_ratio")
        flips.set_yscale("log")
        flips.set_xlabel("epoch")
        flips.grid(alpha=0.3)
        if layers:
            flips.legend(fontsize=7)
    loss.set_title("loss")
    acc.set_title("accuracy")
    for ax in (loss, acc):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.subplots_adjust(left=0.05, right=0.98, top=0.95, bottom=0.07, hspace=0.3, wspace=0.25)
    fig.savefig(out, dpi=100)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
