#!/usr/bin/env bash
# Scaling benchmark: strong scaling (fixed global batch) and weak scaling (fixed per-rank
# batch) of both presets for N = 1, 2 and 4 ranks (4 is oversubscribed on a 2-core machine and
# marked so), over shared memory and over TCP on loopback, each rank with one compute thread;
# plus one process with all cores' threads, the baseline at equal cores; plus, as root where
# network namespaces can be made, 2 emulated hosts (scripts/cluster.sh) per link rate in
# HOST_RATES, 1 rank x 1 thread per host, on the fp32 and the compact wire (strong scaling),
# with `flip mpi-check --timing` across them and the alpha-beta model of
# scripts/scaling-model.py fitted to it (scaling-model-<rate>.txt and .png). Writes a CSV and
# a PNG plot (images/s and efficiency vs N) to the output directory.
#
#   scripts/scaling.sh [OUT_DIR] [STEPS]      default scripts/results, 30 timed steps per row
#   MODELS="binarynet-mlp" STRONG_BATCH=1024 WEAK_BATCH=512 RANKS="1 2 4" scripts/scaling.sh
#   HOST_RATES="1gbit 10gbit" (default; "" skips the emulated hosts)
#
# Each row is `flip bench --json` (release build, Fashion-MNIST batches, 5 warm-up steps)
# with the step's time split per rank: data, compute (forward + backward), communication wait
# (not hidden), optimizer, and waiting for the slowest rank (estimated per step from when each
# rank ends backward, and taken out of the communication wait); the same communication run
# alone; the hidden fraction
# 1 − communication wait / alone; the wire format and the bytes each rank sends per step. Efficiency = images/s ÷ (N × images/s of 1 rank × 1 thread).
# All traffic stays on loopback or inside the namespaces cluster.sh makes. matplotlib comes from PyPI into .build/plot-venv if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-scripts/results}
steps=${2:-30}
models=${MODELS:-"binarynet-mlp larq-cnn"}
strong=${STRONG_BATCH:-1024}
weak=${WEAK_BATCH:-512}
rank_counts=${RANKS:-"1 2 4"}
host_rates=${HOST_RATES-"1gbit 10gbit"}
cores=$(nproc)
mkdir -p "$out"
scripts/setup.sh >/dev/null
swift build -c release >/dev/null
flip=.build/release/flip
csv="$out/scaling.csv"
echo "model,scaling,transport,step,ranks,threads_per_rank,oversubscribed,global_batch,images_per_second,efficiency,data_ms,compute_ms,communication_wait_ms,optimizer_ms,imbalance_wait_ms,communication_alone_ms,hidden_fraction,wire,bytes_sent_per_step" >"$csv"

mpi=(mpirun --allow-run-as-root --oversubscribe --mca oob_tcp_if_include lo)
tcp=(--mca pml ob1 --mca btl self,tcp --mca btl_tcp_if_include lo)
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

# row MODEL SCALING TRANSPORT STEP RANKS THREADS BATCH BASELINE JSON
row() {
  local ips eff over
  ips=$(field "$9" images_per_second)
  eff=$(python3 -c "print(f'{$ips / ($5 * $8):.3f}')")
  over=$([ $(($5 * $6)) -gt "$cores" ] && echo yes || echo no)
  printf '%s,%s,%s,%s,%s,%s,%s,%s,%.0f,%s,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%s,%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "$over" \
    "$7" "$ips" "$eff" "$(field "$9" data_ms)" "$(field "$9" compute_ms)" "$(field "$9" communication_wait_ms)" \
    "$(field "$9" optimizer_ms)" "$(field "$9" imbalance_wait_ms)" "$(field "$9" communication_alone_ms)" \
    "$(field "$9" hidden_fraction)" "$(field "$9" wire)" "$(field "$9" bytes_sent_per_step)" | tee -a "$csv"
}

for model in $models; do
  bench=(bench --model "$model" --steps "$steps" --json)
  for scaling in strong weak; do
    base_batch=$([ "$scaling" = strong ] && echo "$strong" || echo "$weak")
    one=$("$flip" "${bench[@]}" --batch-size "$base_batch" --threads 1)
    echo "$one" >"$out/one-$model-$base_batch.json"
    base=$(field "$one" images_per_second)
    row "$model" "$scaling" none sharded 1 1 "$base_batch" "$base" "$one"
    if [ "$scaling" = strong ]; then
      all=$("$flip" "${bench[@]}" --batch-size "$base_batch" --threads "$cores")
      row "$model" "$scaling" none sharded 1 "$cores" "$base_batch" "$base" "$all"
    fi
    for n in $rank_counts; do
      [ "$n" -gt 1 ] || continue
      batch=$([ "$scaling" = strong ] && echo "$strong" || echo $((weak * n)))
      bind=$([ "$n" -gt "$cores" ] && echo none || echo core)
      for transport in shm tcp; do
        extra=()
        [ "$transport" = tcp ] && extra=("${tcp[@]}")
        r=$("${mpi[@]}" "${extra[@]}" --bind-to "$bind" -np "$n" "$flip" "${bench[@]}" --batch-size "$batch" --threads 1)
        row "$model" "$scaling" "$transport" sharded "$n" 1 "$batch" "$base" "$r"
      done
      if [ "$scaling" = strong ] && [ "$n" -le "$cores" ]; then
        # The plain all-reduce in buckets overlapping backward, for comparison.
        r=$("${mpi[@]}" --bind-to "$bind" -np "$n" "$flip" "${bench[@]}" --batch-size "$batch" --threads 1 --no-shard-optimizer)
        row "$model" "$scaling" shm allreduce "$n" 1 "$batch" "$base" "$r"
      fi
    done
  done
done

# Two emulated hosts per link rate (strong scaling, 1 rank x 1 thread per host).
if [ -n "$host_rates" ]; then
  if [ "$(id -u)" != 0 ] || ! ip netns list >/dev/null 2>&1; then
    echo "scaling.sh: skipping the emulated hosts: they need root and network namespaces (ip netns)" >&2
    host_rates=""
  fi
fi
if [ -n "$host_rates" ]; then
  trap 'scripts/cluster.sh down --prefix fs >/dev/null 2>&1 || true' EXIT
  for rate in $host_rates; do
    scripts/cluster.sh up 2 --rate "$rate" --prefix fs >/dev/null
    read -r -a flags <<<"$(scripts/cluster.sh flags --prefix fs)"
    hosts=(mpirun "${flags[@]}" -np 2 --host fs-h1,fs-h2 "$flip")
    "${hosts[@]}" mpi-check --timing --json >"$out/timing-$rate.json"
    for model in $models; do
      base=$(field "$(cat "$out/one-$model-$strong.json")" images_per_second)
      measured=()
      for wire in fp32 compact; do
        r=$("${hosts[@]}" bench --model "$model" --steps "$steps" --json --batch-size "$strong" --threads 1 --wire "$wire")
        echo "$r" >"$out/hosts-$rate-$model-$wire.json"
        measured+=("$out/hosts-$rate-$model-$wire.json")
        row "$model" strong "hosts-$rate" sharded 2 1 "$strong" "$base" "$r"
      done
      half=()
      [ $((weak * 2)) = "$strong" ] && half=(--single-half "$out/one-$model-$weak.json")
      "$(scripts/plot-venv.sh)" scripts/scaling-model.py --timing "$out/timing-$rate.json" \
        --single "$out/one-$model-$strong.json" "${half[@]}" --measured "${measured[@]}" \
        --plot "$out/scaling-model-$rate-$model.png" | tee "$out/scaling-model-$rate-$model.txt"
    done
    scripts/cluster.sh down --prefix fs >/dev/null
  done
fi

python=$(scripts/plot-venv.sh)
"$python" - "$csv" "$out/scaling.png" "$cores" <<'PY'
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = list(csv.DictReader(open(sys.argv[1])))
cores = int(sys.argv[3])
models = sorted({r["model"] for r in rows})
fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 8), squeeze=False)
for j, model in enumerate(models):
    for scaling, style in (("strong", "-"), ("weak", "--")):
        for transport, color in (("shm", "tab:blue"), ("tcp", "tab:orange")):
            sel = [r for r in rows if r["model"] == model and r["scaling"] == scaling and r["step"] == "sharded"
                   and r["threads_per_rank"] == "1" and r["transport"] in (transport, "none")]
            sel.sort(key=lambda r: int(r["ranks"]))
            n = [int(r["ranks"]) for r in sel]
            label = f"{scaling}, {transport}"
            axes[0][j].plot(n, [float(r["images_per_second"]) for r in sel], style, marker="o", color=color, label=label)
            axes[1][j].plot(n, [float(r["efficiency"]) for r in sel], style, marker="o", color=color, label=label)
    for r in rows:
        if r["model"] == model and r["threads_per_rank"] != "1":
            axes[0][j].scatter([1], [float(r["images_per_second"])], marker="*", s=150, color="k",
                               label=f"1 process x {r['threads_per_rank']} threads", zorder=5)
    for ax in axes[:, j]:
        ax.axvspan(cores + 0.5, 4.5, color="0.9", label=f"oversubscribed (> {cores} cores)")
        ax.set_xticks([1, 2, 4])
        ax.set_xlabel("ranks (1 compute thread each)")
        ax.grid(alpha=0.3)
    axes[0][j].set_title(model)
    axes[0][j].set_ylabel("images/s")
    axes[1][j].set_ylabel("efficiency vs 1 rank x 1 thread")
    axes[1][j].set_ylim(0, 1.1)
    axes[0][j].legend(fontsize=8)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
print("plot:", sys.argv[2])
PY
echo "csv: $csv"
