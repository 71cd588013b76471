#!/usr/bin/env bash
# Sets up what is missing, builds a release binary and trains binarynet-mlp on Fashion-MNIST
# under mpirun, one rank per core of this machine with one compute thread each (README's first
# command). Extra arguments go to `flip train`, e.g. --epochs 2. FLIP_RANKS=N picks another
# number of ranks; FLIP_RANKS=0 trains in one process on all cores instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build -c release
ranks=${FLIP_RANKS:-$(nproc)}
train=(.build/release/flip train --model binarynet-mlp --epochs 10 --batch-size 512 --seed 0
  --out runs/binarynet-mlp --overwrite "$@")
if [ "$ranks" -eq 0 ]; then exec "${train[@]}"; fi
# One node, traffic on loopback only; more ranks than cores oversubscribe without binding.
mpi=(-np "$ranks" --mca oob_tcp_if_include lo --mca btl_tcp_if_include lo)
if [ "$ranks" -gt "$(nproc)" ]; then mpi+=(--oversubscribe --bind-to none); else mpi+=(--bind-to core); fi
if [ "$(id -u)" -eq 0 ]; then mpi+=(--allow-run-as-root); fi
exec mpirun "${mpi[@]}" "${train[@]}"
