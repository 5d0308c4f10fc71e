# Sourced by slurm/train*.sbatch after the training step: `finish_step RC`. The trainer exits 3 after a
# checkpoint taken on SIGUSR2/SIGTERM; the job is then requeued (retried: a busy slurmctld can refuse one
# request) and resumes from that checkpoint. The step's exit code goes to the batch log either way.
finish_step() {
  local rc=$1 try
  echo "sgmagnet: training step of job $SLURM_JOB_ID ended with exit code $rc"
  if [ "$rc" = 3 ]; then
    for try in 1 2 3 4 5; do
      scontrol requeue "$SLURM_JOB_ID" && exit "$rc"
      echo "sgmagnet: scontrol requeue failed (try $try of 5)"; sleep $(( try * 5 ))
    done
    echo "sgmagnet: could not requeue job $SLURM_JOB_ID; resubmit the script to resume from the latest checkpoint"
  fi
  exit "$rc"
}
