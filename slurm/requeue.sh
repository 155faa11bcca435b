# Sourced by the sbatch templates: run a job step so that a stopped run comes back.
# The templates ask SLURM for USR1 90 s before the time limit (--signal=USR1@90) and allow a
# requeue (--requeue). On USR1 or SIGTERM (preemption, scancel) run.py finishes its current
# step, saves last.ckpt, records "status": "preempted" and exits 75; this then requeues the
# job, which starts again with the same job id, hence the same run folder, and run.resume=auto
# continues from the checkpoint. Any other exit status is the job's.
trap 'echo "batch script: SIGTERM; waiting for the run to save" >&2' TERM  # wait for srun
requeueable() {
  local status=0
  "$@" || status=$?
  if [ "$status" = 75 ]; then
    local id="${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}"
    id="${id:-$SLURM_JOB_ID}"
    echo "run stopped and saved (exit 75): requeueing job $id" >&2
    scontrol requeue "$id" || echo "scontrol requeue $id failed (SLURM may requeue it itself)" >&2
  fi
  return "$status"
}
