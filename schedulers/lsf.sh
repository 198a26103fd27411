#!/usr/bin/env bash
# Train one hvdgan job file under IBM Spectrum LSF, resuming where the last run stopped.
#
#   bsub < schedulers/lsf.sh                               # jobs/digits-demo.yaml
#   JOB=jobs/cifar10-dcgan64.yaml bsub -n 8 -W 12:00 < schedulers/lsf.sh
#
# Ranks: one per slot of $LSB_DJOB_HOSTFILE, started by mpirun. Each start runs `hvdgan train --resume auto`.
# Ending early (docs/cluster.md, "Other schedulers"):
# - the run limit: `-wa USR1 -wt 5` sends USR1 5 minutes before it (Slurm's --signal). `hvdgan launch` passes
#   it on: the ranks finish their step, write a checkpoint and exit 75;
# - bkill, the run limit itself, a preemption: INT, then TERM and KILL, JOB_TERMINATE_INTERVAL (10 s) apart
#   (LSF 10: INT and TERM 20 s before KILL). The first of them stops the ranks the same way.
# Exit status: 0 finished; 75 stopped with a checkpoint (bsub it again: it continues); else failed.
#BSUB -J hvdgan
#BSUB -n 2
#BSUB -W 4:00
#BSUB -wa USR1
#BSUB -wt 5
#BSUB -o hvdgan.%J.log
set -euo pipefail
cd "${LS_SUBCWD:-$PWD}"
if [ -n "${JOB:-}" ]; then job=$JOB; else job=${1:-jobs/digits-demo.yaml}; [ $# -eq 0 ] || shift; fi
[ -f "${LSB_DJOB_HOSTFILE:-}" ] || { echo "error: \$LSB_DJOB_HOSTFILE is not a file (submit with bsub)" >&2; exit 2; }
command -v hvdgan >/dev/null || PATH=${HVDGAN_VENV:-$PWD/.venv}/bin:$PATH
exec hvdgan launch --np "$(grep -c . "$LSB_DJOB_HOSTFILE")" --hostfile "$LSB_DJOB_HOSTFILE" --launcher mpirun \
  "$job" -- --resume auto "$@"
