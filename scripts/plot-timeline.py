#!/usr/bin/env python3
"""Draws a Flip timeline (the Chrome trace of `flip train --timeline`) as a PNG, one row per
track of each rank, as Perfetto shows it.

    scripts/plot-timeline.py TRACE.json OUT.png [--steps A:B]

--steps keeps the spans of global steps A <= step < B (default: all). Needs matplotlib
(scripts/plot-venv.sh).
"""
import argparse
import json
import sys


def main():
    p = argparse.ArgumentParser()
    p.add_argument("trace")
    p.add_argument("out")
    p.add_argument("--steps")
    a = p.parse_args()
    try:
        events = json.load(open(a.trace))["traceEvents"]
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"plot-timeline: {a.trace}: not a Chrome trace ({e})")
    lo, hi = (int(x) for x in a.steps.split(":")) if a.steps else (None, None)
    names = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    procs = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    spans = [e for e in events if e["ph"] == "X" and (lo is None or lo <= e["args"]["step"] < hi)]
    if not spans:
        sys.exit("plot-timeline: no spans in that window")
    rows = sorted({(e["pid"], e["tid"]) for e in spans})
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = {}
    palette = plt.get_cmap("tab20").colors
    t0 = min(e["ts"] for e in spans)
    fig, ax = plt.subplots(figsize=(16, 0.42 * len(rows) + 1.5))
    for y, row in enumerate(rows):
        for e in (s for s in spans if (s["pid"], s["tid"]) == row):
            key = e["name"].split(" bucket")[0] if "bucket" in e["name"] else e["name"].split(" ")[0] + (" " + e["name"].split(" ")[1] if e["name"].startswith(("forward", "backward")) else "")
            color = colors.setdefault(key, palette[len(colors) % len(palette)])
            ax.broken_barh([((e["ts"] - t0) / 1000, max(e["dur"] / 1000, 0.02))], (y - 0.4, 0.8), facecolors=color)
            if e["dur"] / 1000 > 0.04 * ((max(s["ts"] + s["dur"] for s in spans) - t0) / 1000) / 10:
                ax.text((e["ts"] - t0) / 1000 + e["dur"] / 2000, y, e["name"].replace("forward ", "f ").replace("backward ", "b "),
                        ha="center", va="center", fontsize=6, clip_on=True)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{procs.get(p, p)}: {names.get((p, t), t)}" for p, t in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"{a.trace}" + (f", steps {lo}..<{hi}" if lo is not None else ""))
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(f"plot: {a.out}")


if __name__ == "__main__":
    main()
