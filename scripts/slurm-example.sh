#!/usr/bin/env bash
# An example SLURM batch script for Flip on a cluster; copy it and adapt the #SBATCH lines.
#   sbatch scripts/slurm-example.sh configs/binarynet-mlp.yaml runs/mlp-slurm
# Not run on this machine (it has no SLURM). One MPI rank per core, one compute thread each.
#
#SBATCH --job-name=flip
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=32          # one rank per core
#SBATCH --cpus-per-task=1
#SBATCH --time=04:00:00
#SBATCH --signal=B:USR1@120           # 120 s before the time limit: SIGUSR1 to this script
#SBATCH --requeue                     # a preempted or requeued job resumes (below)
#SBATCH --output=flip-%j.out
#
# Stopping: SLURM signals the batch shell (B:), which forwards SIGUSR1 to mpirun, which forwards
# it to every rank. Flip then stops all ranks at the next step boundary, rank 0 writes a
# checkpoint, and every rank exits 0. Under `srun` instead of mpirun, use --signal=USR1@120
# (without B:) so that SLURM signals the ranks directly; SIGTERM works the same way there.
# Resuming: the script passes --resume whenever the run directory already holds checkpoints,
# so resubmitting (or --requeue) continues the run, on any number of ranks that divides the
# global batch.
set -euo pipefail
config=${1:?usage: sbatch scripts/slurm-example.sh CONFIG RUN_DIR}
run=${2:?usage: sbatch scripts/slurm-example.sh CONFIG RUN_DIR}
flip=${FLIP:-$PWD/.build/release/flip}
export OMP_PROC_BIND=true

args=(train --config "$config" --out "$run" --checkpoint-every 500)
if compgen -G "$run/ckpt-*.safetensors" >/dev/null; then
  args=(train --resume "$run")
fi

# mpirun gets the node list from SLURM; bash waits in `wait`, so it can pass the signal on.
# --progress lines: the ranks write to Open MPI's pseudo-terminals, but the log is a file.
mpirun --bind-to core --map-by core "$flip" "${args[@]}" --threads 1 --progress lines &
pid=$!
trap 'echo "flip: SIGUSR1 from SLURM, asking the job to stop at the next step"; kill -USR1 "$pid"' USR1
status=0
wait "$pid" || status=$?
if [ "$status" -gt 128 ]; then wait "$pid" || status=$?; fi  # `wait` was interrupted by the trap
exit "$status"
