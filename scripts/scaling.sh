#!/usr/bin/env bash
# Strong-scaling benchmark on this machine: the same global batch trained by
#   1 process × 1 thread, 1 process × N threads, and N MPI ranks × 1 thread (shared memory),
#   plus N ranks over TCP on loopback (the transport that crosses hosts).
# Prints one JSON object per configuration (flip bench --json) and the efficiency of each
# against 1 process × 1 thread. Usage: scripts/scaling.sh [model] [batch] [steps]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-binarynet-mlp}
batch=${2:-512}
steps=${3:-60}
ranks=$(nproc)
swift build -c release >/dev/null
flip=.build/release/flip
mpi=(mpirun --allow-run-as-root --oversubscribe --mca oob_tcp_if_include lo)
tcp=(--mca pml ob1 --mca btl self,tcp --mca btl_tcp_if_include lo)
bench=(bench --model "$model" --batch-size "$batch" --steps "$steps" --json)
run() { echo "{\"config\": \"$1\", \"result\": $2}"; }
one=$("$flip" "${bench[@]}" --threads 1)
run "1 process x 1 thread" "$one"
run "1 process x $ranks threads" "$("$flip" "${bench[@]}" --threads "$ranks")"
run "$ranks ranks x 1 thread (shared memory)" "$("${mpi[@]}" -np "$ranks" "$flip" "${bench[@]}" --threads 1)"
run "$ranks ranks x 1 thread (TCP loopback)" "$("${mpi[@]}" "${tcp[@]}" -np "$ranks" "$flip" "${bench[@]}" --threads 1)"
