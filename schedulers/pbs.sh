#!/usr/bin/env bash
# Train one hvdgan job file under PBS (OpenPBS, PBS Pro; Torque the same), resuming where the last run stopped.
#
#   qsub -v JOB=jobs/cifar10-dcgan64.yaml schedulers/pbs.sh
#   qsub -l select=2:ncpus=8:mpiprocs=4 -l walltime=12:00:00 -v JOB=jobs/cifar10-dcgan64.yaml schedulers/pbs.sh
#
# Ranks: one per line of $PBS_NODEFILE (mpiprocs per chunk), started by mpirun (through PBS's TM interface
# when Open MPI has it, else ssh). Each start runs `hvdgan train --resume auto`.
# Ending early (docs/cluster.md, "Other schedulers"): qdel, the walltime and a preemption send TERM to the
# job, then KILL `kill_delay` seconds later (10 by default: raise it per job with `qsub -W kill_delay=60`).
# `hvdgan launch` passes the TERM on as the ranks' stop: the step in progress, a checkpoint, exit 75. PBS gives
# no warning before the walltime (Slurm's --signal): the kill_delay must cover a step and a checkpoint.
# Exit status: 0 finished; 75 stopped with a checkpoint (qsub it again, or `-r y` reruns it: it continues);
# else failed.
#PBS -N hvdgan
#PBS -l select=1:ncpus=2:mpiprocs=2
#PBS -l walltime=04:00:00
#PBS -r y
#PBS -j oe
set -euo pipefail
cd "${PBS_O_WORKDIR:-$PWD}"
if [ -n "${JOB:-}" ]; then job=$JOB; else job=${1:-jobs/digits-demo.yaml}; [ $# -eq 0 ] || shift; fi
[ -f "${PBS_NODEFILE:-}" ] || { echo "error: \$PBS_NODEFILE is not a file (submit with qsub)" >&2; exit 2; }
command -v hvdgan >/dev/null || PATH=${HVDGAN_VENV:-$PWD/.venv}/bin:$PATH
exec hvdgan launch --np "$(grep -c . "$PBS_NODEFILE")" --hostfile "$PBS_NODEFILE" --launcher mpirun \
  "$job" -- --resume auto "$@"
