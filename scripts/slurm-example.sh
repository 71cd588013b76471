#!/usr/bin/env bash
# Flip under SLURM: one batch script for every job of a run longer than a job's time limit.
#
#   sbatch scripts/slurm-example.sh CONFIG RUN_DIR [flip train options...]
#   sbatch -N 2 --ntasks-per-node 1 -t 15 scripts/slurm-example.sh configs/binarynet-mlp.yaml runs/mlp
#
# Copy it and adapt the #SBATCH lines (sizes given to sbatch override them). Each job runs
# `flip train --config CONFIG --resume-or-start RUN_DIR`: the first starts the run, every later
# one continues it from its newest valid checkpoint. USR1_MARGIN seconds (the --signal line)
# before the time limit SLURM sends SIGUSR1 to this script, which passes it to mpirun, which
# passes it to every rank; Flip stops all ranks at the next step, writes a checkpoint and exits
# 75 ("to be continued"), and the script requeues the job (`scontrol requeue`). A run that
# finishes (0) is not requeued. Any other status is a failure: the job is requeued while the
# run directory's job record shows at most FLIP_MAX_RESTARTS (default 3) failed runs in a row,
# so a broken configuration cannot loop forever. A job whose node fails is requeued by SLURM
# itself (--requeue), or by this script when only another node failed.
#
# The job record, RUN_DIR/slurm-jobs.jsonl, has one row when each run of a job starts and one
# when it ends: the job id, SLURM_RESTART_COUNT (0 for the first run, then 1, 2, ...), the
# nodes, the exit status, the outcome (finished, stopped, failed, gave-up) and whether the job
# was requeued. A start without an end is a run whose batch node died; it counts as failed.
#
# Environment: FLIP (the flip binary; default ./.build/release/flip of the submit directory),
# FLIP_MAX_RESTARTS, FLIP_BIND (mpirun's --bind-to, default core; none where nodes share
# cores), and Open MPI's OMPI_MCA_* (e.g. the network: OMPI_MCA_btl_tcp_if_include), which
# sbatch passes on from the submitting shell. Under srun instead of mpirun: srun --mpi=pmix
# "$FLIP" train ... works too (docs/slurm.md); use --signal=USR1@120 (without B:) so that SLURM
# signals the ranks themselves.
#
#SBATCH --job-name=flip
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=32          # one rank per core
#SBATCH --cpus-per-task=1
#SBATCH --time=04:00:00
#SBATCH --signal=B:USR1@300           # the margin: well above one checkpoint's time (docs/slurm.md)
#SBATCH --requeue                     # requeued jobs (by this script or after a node failure) may run again
#SBATCH --open-mode=append            # every run of the job appends to one log
#SBATCH --output=flip-%j.out
set -uo pipefail
usage="usage: sbatch scripts/slurm-example.sh CONFIG RUN_DIR [flip train options...]"
config=${1:?$usage}
run=${2:?$usage}
shift 2
flip=${FLIP:-$PWD/.build/release/flip}
max_restarts=${FLIP_MAX_RESTARTS:-3}
job=${SLURM_JOB_ID:-none}
restart=${SLURM_RESTART_COUNT:-0}
record=$run/slurm-jobs.jsonl
export OMP_PROC_BIND=true

mkdir -p "$run"
note() {  # EVENT JSON-FIELDS: one row of the job record
  printf '{"time": "%s", "job": "%s", "restart": %d, "event": "%s"%s}\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$job" "$restart" "$1" "${2:+, $2}" >>"$record"
}
# Failed runs of this job since its last run that finished or stopped to be continued; a
# start without an end (the batch node died) is one.
failures() {
  [ -f "$record" ] || { echo 0; return; }
  awk -v job="\"$job\"" '
    index($0, "\"job\": " job ",") == 0 { next }
    /"event": "start"/ { if (open) n++; open = 1; next }
    /"event": "end"/ { open = 0; if (/"outcome": "(failed|gave-up)"/) n++; else n = 0 }
    END { print n + open }  # a start left open: that run died with its batch node' "$record"
}

earlier=$(failures)
if [ "$earlier" -gt "$max_restarts" ]; then
  echo "flip: $earlier failed runs of job $job in a row (FLIP_MAX_RESTARTS=$max_restarts): giving up; see $record" >&2
  note start "\"nodes\": \"${SLURM_JOB_NODELIST:-}\""
  note end '"status": 1, "outcome": "gave-up", "requeued": false'
  exit 1
fi
note start "\"nodes\": \"${SLURM_JOB_NODELIST:-}\", \"tasks\": ${SLURM_NTASKS:-0}"
echo "flip: job $job, run $restart (SLURM_RESTART_COUNT), on ${SLURM_JOB_NODELIST:-?}: $run"

# mpirun reads the allocation from SLURM. bash waits in `wait`, so it can pass the signal on.
# --progress lines: the ranks write to Open MPI's pseudo-terminals, but the log is a file.
mpirun --bind-to "${FLIP_BIND:-core}" --map-by core \
  "$flip" train --config "$config" --resume-or-start "$run" --threads 1 --progress lines "$@" &
pid=$!
trap 'echo "flip: SIGUSR1 from SLURM, asking the job to stop at the next step"; kill -USR1 "$pid"' USR1
status=0
wait "$pid" || status=$?
while [ "$status" -gt 128 ] && kill -0 "$pid" 2>/dev/null; do  # `wait` was interrupted by the trap
  status=0
  wait "$pid" || status=$?
done

case $status in
  0) note end '"status": 0, "outcome": "finished", "requeued": false'; exit 0 ;;
  75) outcome=stopped ;;
  *) outcome=failed ;;
esac
if [ "$outcome" = failed ] && [ $((earlier + 1)) -gt "$max_restarts" ]; then
  echo "flip: failed with status $status, $((earlier + 1)) failed runs in a row (FLIP_MAX_RESTARTS=$max_restarts): not requeued" >&2
  note end "\"status\": $status, \"outcome\": \"failed\", \"requeued\": false"
  exit "$status"
fi
echo "flip: $outcome (status $status): requeueing job $job"
note end "\"status\": $status, \"outcome\": \"$outcome\", \"requeued\": true"
scontrol requeue "$job" || {
  echo "flip: scontrol requeue $job failed; continue with: sbatch $0 $config $run" >&2
  exit "$status"
}
