#!/usr/bin/env python3
"""An alpha-beta model of Flip's sharded data-parallel step, from measured collectives.

  scripts/scaling-model.py --timing T.json --single B1.json [--single-half H.json]
                           [--measured B2.json ...] [--node-compute-ms MS]
                           [--nodes 1,2,4,...,64] [--plot OUT.png]

T.json    `mpirun <flags> -np 2 flip mpi-check --timing --json` across two hosts: per
          collective (fp32 and bf16 reduce-scatter, all-gather) a fit
          t = (N - 1)*alpha + beta*bytes sent per rank. The model fits each again over the
          buffers up to the bucket size (--bucket-mb, default 4: the largest message the
          step sends), where T.json has the points: over a capped link the largest buffers
          (16 MiB) may run at a different rate, and would set an all-sizes fit alone.
B1.json   `flip bench --json` of one process (the node's compute at the global batch B):
          compute_ms + optimizer_ms per step, variables, sign_variables, batch_size.
H.json    the same one-process bench at half the global batch: with B1 it splits the compute
          into a part per image and a part per step that every rank repeats whatever its share
          of the batch (quantizing whole binary kernels, counting flips, the int8 copy):
          fixed = 2*compute(B/2) - compute(B), at least 0. Without it, fixed = 0.
B2.json   `flip bench --json` of the same model on the hosts (any --wire): the measured points
          the model is checked against (ranks, wire, ms_per_step, hidden_fraction, and
          imbalance_wait_ms over compute_ms for the stragglers' share).

Strong scaling at a fixed global batch B over N nodes, one rank per node:
    compute(N)   = (compute_ms - fixed) / N + fixed + optimizer_ms / N
                                                       (each node does 1/N of the batch and of
                                                        the sharded update; --node-compute-ms
                                                        replaces the measured one-node time)
    sent_rs(N)   = (N-1)/N * P * g                      g = 4 bytes (fp32) or 2 (bf16)
    sent_ag(N)   = (N-1)/N * (P_sign/8 + 4*(P - P_sign))   compact; (N-1)/N * 4P on fp32
    comm(N)      = rs.alpha*(N-1) + rs.beta*sent_rs + ag.alpha*(N-1) + ag.beta*sent_ag
    wait(N)      = s * compute(N) * e(N) / e(2)             waiting for the slowest rank: s is the
                                                        wait over the compute measured on 2
                                                        hosts for that wire (the other wire's
                                                        if it has none; 0 if neither); e(N)
                                                        the expected maximum of N standard
                                                        normal draws (ranks whose step times
                                                        jitter independently)
    step(N)      = compute(N) + wait(N) + comm(N) - min(h * comm(N), compute(N))
                                                       h: the hidden fraction measured on
                                                        2 hosts for that wire (mean of the
                                                        points; 0 if none);
                                                        no more hides than there is compute
    efficiency   = step(1) / (N * step(N))
Prints the table and, for each measured point, the model's step time and its error.
"""
import argparse
import json
import math
import sys


def expected_maximum(n):
    """E[max of n standard normal draws], by the trapezoid rule over [-8, 8]."""
    if n <= 1:
        return 0.0
    h = 1e-3
    total = 0.0
    for i in range(16001):
        x = -8 + i * h
        pdf = math.exp(-x * x / 2) / math.sqrt(2 * math.pi)
        cdf = 0.5 * (1 + math.erf(x / math.sqrt(2)))
        total += (0.5 if i in (0, 16000) else 1.0) * x * n * pdf * cdf ** (n - 1)
    return total * h


def fit_points(points, name, max_bytes):
    """Least squares t = alpha + beta*sent (alpha per message over 1 peer: 2 hosts) over the
    points of collective `name` whose buffer is at most `max_bytes`; None if under 2 points."""
    p = [q for q in points if q["collective"] == name and q["buffer_bytes"] <= max_bytes]
    if len(p) < 2:
        return None
    xs = [q["sent_bytes"] for q in p]
    ys = [q["ms"] for q in p]
    mx = sum(xs) / len(xs)
    my = sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    beta = max(0.0, sxy / sxx) if sxx > 0 else 0.0
    alpha = max(0.0, my - beta * mx)
    return {"collective": name, "alpha_ms": alpha, "beta_ms_per_byte": beta,
            "gbit_per_s": 8 / beta / 1e6 if beta > 0 else float("inf")}


def load(path):
    with open(path) as f:
        text = f.read().strip()
    # flip bench prints one JSON object; mpi-check --timing --json too (after nothing else).
    return json.loads(text.splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--timing", required=True)
    p.add_argument("--single", required=True)
    p.add_argument("--single-half")
    p.add_argument("--measured", nargs="*", default=[])
    p.add_argument("--node-compute-ms", type=float)
    p.add_argument("--nodes", default="1,2,4,8,16,32,64")
    p.add_argument("--plot")
    p.add_argument("--bucket-mb", type=float, default=4.0)
    a = p.parse_args()
    try:
        timing = load(a.timing)
        single = load(a.single)
        measured = [load(m) for m in a.measured]
        half = load(a.single_half) if a.single_half else None
    except (OSError, ValueError, IndexError) as e:
        sys.exit(f"scaling-model: cannot read the inputs: {e}")
    fits = {f["collective"]: f for f in timing["fits"]}
    # Fit again over the buffers the step sends (up to a bucket), where the points allow.
    for name in list(fits):
        refit = fit_points(timing.get("points", []), name, a.bucket_mb * 1048576)
        if refit:
            fits[name] = refit
    for need in ("reduce-scatter fp32", "reduce-scatter bf16", "all-gather"):
        if need not in fits:
            sys.exit(f"scaling-model: {a.timing} has no fit for {need}")
    P = single["variables"]
    P_sign = single["sign_variables"]
    B = single["batch_size"]
    if half is not None and (half.get("model") != single.get("model") or 2 * half["batch_size"] != B):
        sys.exit(f"scaling-model: {a.single_half} must bench {single.get('model')} at batch {B // 2}")
    fixed = max(0.0, 2 * half["compute_ms"] - single["compute_ms"]) if half else 0.0
    measured_node = single["compute_ms"] + single["optimizer_ms"]
    node = a.node_compute_ms if a.node_compute_ms else measured_node
    # The per-step part scales with the node's speed like the rest.
    fixed_share = fixed / measured_node
    # Per wire, the means over the measured multi-rank points (the straggler share over the
    # 2-rank points that carry their compute time).
    def mean_per_wire(value, keep):
        sums = {}
        for m in measured:
            if keep(m):
                sums.setdefault(m.get("wire", "fp32"), []).append(value(m))
        return {wire: sum(v) / len(v) for wire, v in sums.items()}

    hidden = mean_per_wire(lambda m: m["hidden_fraction"], lambda m: m.get("ranks", 1) > 1)
    straggling = mean_per_wire(
        lambda m: m.get("imbalance_wait_ms", 0.0) / m["compute_ms"],
        lambda m: m.get("ranks", 1) == 2 and m.get("compute_ms", 0) > 0)
    # Stragglers do not depend on the wire: a wire with no 2-rank point takes the others' mean.
    if straggling:
        overall = sum(straggling.values()) / len(straggling)
        for wire in ("fp32", "compact"):
            straggling.setdefault(wire, overall)
    e2 = expected_maximum(2)

    def comm(n, wire):
        if n == 1:
            return 0.0
        frac = (n - 1) / n
        rs = fits["reduce-scatter bf16" if wire == "compact" else "reduce-scatter fp32"]
        ag = fits["all-gather"]
        sent_rs = frac * P * (2 if wire == "compact" else 4)
        sent_ag = frac * ((P_sign / 8 + 4 * (P - P_sign)) if wire == "compact" else 4 * P)
        return (rs["alpha_ms"] + ag["alpha_ms"]) * (n - 1) + rs["beta_ms_per_byte"] * sent_rs + ag["beta_ms_per_byte"] * sent_ag

    def compute(n, total):
        if n == 1:
            return total
        return total * (1 - fixed_share) / n + total * fixed_share

    def wait(n, wire, total):
        return straggling.get(wire, 0.0) * compute(n, total) * expected_maximum(n) / e2 if n > 1 else 0.0

    def step(n, wire, total=node):
        # Communication hides behind the step's compute at most.
        c, m = compute(n, total), comm(n, wire)
        return c + wait(n, wire, total) + m - min(hidden.get(wire, 0.0) * m, c)

    nodes = [int(x) for x in a.nodes.split(",")]
    print(f"model: {single.get('model')}, global batch {B}, {P} variables ({P_sign} binary, as sign bits on the compact wire)")
    print(f"one node: {node:.1f} ms of compute and update per step, {node * fixed_share:.1f} ms of it repeated on every rank; links: " + ", ".join(
        f"{k} {f['alpha_ms']:.3f} ms/msg, {f['gbit_per_s']:.2f} Gbit/s" for k, f in fits.items()))
    print(f"hidden fraction of the communication (measured on 2 hosts): {hidden or 'none measured, 0'}")
    print(f"waiting for the slowest rank over compute (measured on 2 hosts): {straggling or 'none measured, 0'}")
    print(f"{'nodes':>5}  {'fp32 ms':>9} {'eff':>5} {'img/s':>8}   {'compact ms':>10} {'eff':>5} {'img/s':>8}")
    rows = []
    for n in nodes:
        f, c = step(n, "fp32"), step(n, "compact")
        rows.append((n, f, c))
        print(f"{n:>5}  {f:9.1f} {step(1, 'fp32') / (n * f):5.2f} {B / f * 1000:8.0f}   {c:10.1f} "
              f"{step(1, 'compact') / (n * c):5.2f} {B / c * 1000:8.0f}")
    checks = []
    for m in measured:
        n = m.get("ranks", 1)
        wire = m.get("wire", "fp32")
        # The model's compute from the measured one-node run (not --node-compute-ms).
        model = step(n, wire, measured_node)
        error = (model - m["ms_per_step"]) / m["ms_per_step"]
        checks.append((n, wire, m["ms_per_step"], model, error))
        print(f"measured {n} ranks, {wire} wire: {m['ms_per_step']:.1f} ms/step; model {model:.1f} ms ({error * 100:+.1f} %)")
    if a.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        for wire, col, style in (("fp32", 1, "-"), ("compact", 2, "--")):
            xs = [r[0] for r in rows]
            ax[0].plot(xs, [B / r[col] * 1000 for r in rows], style, marker="o", label=f"model, {wire} wire")
            ax[1].plot(xs, [step(1, wire) / (r[0] * r[col]) for r in rows], style, marker="o", label=f"model, {wire} wire")
        for n, wire, ms, _, _ in checks:
            ax[0].plot([n], [B / ms * 1000], "k^" if wire == "compact" else "ks", label=f"measured, {wire}")
            ax[1].plot([n], [(single["compute_ms"] + single["optimizer_ms"]) / (n * ms)], "k^" if wire == "compact" else "ks")
        for x in ax:
            x.set_xscale("log", base=2)
            x.set_xlabel("nodes (one rank each)")
            x.grid(True, alpha=0.3)
        ax[0].set_ylabel("images/s")
        ax[1].set_ylabel("strong-scaling efficiency")
        ax[0].legend(fontsize=8)
        fig.suptitle(f"{single.get('model')}, global batch {B}: alpha-beta model from 2-host mpi-check --timing")
        fig.tight_layout()
        fig.savefig(a.plot, dpi=110)
        print(f"plot: {a.plot}")


if __name__ == "__main__":
    main()
