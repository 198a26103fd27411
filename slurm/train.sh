#!/usr/bin/env bash
# Train one hvdgan job file on a Slurm allocation, with preemption handled by checkpoint + requeue.
#
#   mkdir -p logs && sbatch slurm/train.sh [JOB.yaml] [hvdgan train options...]
#   sbatch --nodes=2 --ntasks-per-node=4 --gpus-per-task=1 slurm/train.sh jobs/cifar10-dcgan64.yaml
#
# Submit from the repository root (logs/ must exist: Slurm opens --output before this script runs).
# Ranks are started with `srun --mpi=pmix`, or with mpirun when this Slurm has no PMIx plugin
# (HVDGAN_LAUNCHER=srun|mpirun forces one). Each start runs `hvdgan train --resume auto`, so a requeued
# job continues from its newest checkpoint.
#
# Ending early (docs/cluster.md, "Stopping, preemption and exit status"):
# - USR1: 120 s before the time limit Slurm sends USR1 to this script (--signal=B:USR1@120; a site or
#   `scancel --signal=USR1 --batch JOBID` can send it any time). The ranks finish the step they are in,
#   write a checkpoint and exit 75; then this script requeues the job (--requeue), and the log goes on in
#   the same file (--open-mode=append).
# - TERM (scancel, a preemption, the time limit): Slurm sends it to every task itself, and KILL KillWait
#   (or a partition's GraceTime) seconds later; the ranks checkpoint within a step and exit 75. A cancelled
#   job then ends; a preempted one (PreemptMode=REQUEUE) is requeued.
# - Exit status: 0 finished; 75 stopped with a checkpoint (requeued after USR1); anything else failed (no
#   requeue: look at the log).
#
# Elastic (HVDGAN_ELASTIC=1, docs/elastic.md): `hvdgan launch --elastic` on this node starts the ranks over ssh
# on the job's nodes that Slurm reports usable, and the run goes on when a node's ranks are lost (submit with
# --no-kill, so that Slurm does not end the job when a node fails). HVDGAN_MIN_NP: the fewest ranks to go on
# with (default: one node's tasks). Ranks started over ssh are outside the job's cgroups and accounting
# unless the site adopts them (pam_slurm_adopt).
#   HVDGAN_ELASTIC=1 sbatch --no-kill --nodes=2 slurm/train.sh jobs/digits-demo.yaml
#
#SBATCH --job-name=hvdgan
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=1
##SBATCH --gpus-per-task=1
#SBATCH --time=02:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
# GPU clusters: remove one '#' from --gpus-per-task above (one GPU per rank), and raise --cpus-per-task
# to the cores per GPU (data loading and the intra-op threads use them).

set -euo pipefail

JOB=${1:-jobs/digits-demo.yaml}
[ $# -gt 0 ] && shift
say() { printf '[train.sh %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# --- signals first: from here on USR1/TERM are taken at any moment (the ranks run in the background) --
# The ranks get USR1 either way: srun and mpirun forward it to every rank as it is, but answer a TERM by
# killing them; and they get it again every 5 s (a USR1 that came before the ranks existed is not lost).
stopping= trapped=0
step=
forward() {
  [ -n "$step" ] || return 0
  kill -USR1 "$step" 2>/dev/null || true
  if [ -z "${again:-}" ]; then
    ( while sleep 5 && kill -0 "$step" 2>/dev/null; do kill -USR1 "$step" 2>/dev/null || true; done ) &
    again=$!
  fi
}
on_usr1() { trapped=1; : "${stopping:=USR1}"; say "USR1: asking the ranks to checkpoint and stop (then requeue)"; forward; }
on_term() { trapped=1; stopping=TERM; say "TERM: asking the ranks to checkpoint and stop (no requeue)"; forward; }
trap on_usr1 USR1
trap on_term TERM


# --- site hook: load what your cluster needs (left empty: nothing site-specific by default) ----------
# module purge
# module load cuda/13.0 openmpi/4.1 python/3.11

export HDF5_USE_FILE_LOCKING=FALSE      # HDF5 locks fail or hang on many parallel file systems
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export PYTHONUNBUFFERED=1

# --- network interface for the ranks' TCP traffic: Horovod's Gloo (HOROVOD_GLOO_IFACE), Open MPI's TCP BTL
# and out-of-band channel (OMPI_MCA_btl_tcp_if_include, OMPI_MCA_oob_tcp_if_include) and NCCL's bootstrap
# (NCCL_SOCKET_IFNAME). HVDGAN_NET_IFACE=ib0 names it. Unset, on several nodes it is the interface this node
# reaches the next node of the allocation through (`ip route get`: sends nothing); on one node the
# libraries choose. A variable you set yourself is kept.
iface=${HVDGAN_NET_IFACE:-}
if [ -z "$iface" ] && [ "${SLURM_JOB_NUM_NODES:-1}" -gt 1 ] && command -v ip >/dev/null 2>&1; then
  peer=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-}" 2>/dev/null | grep -vx "$(hostname -s)" | head -n 1 || true)
  addr=$( { [ -n "$peer" ] && getent hosts "$peer"; } | awk '{print $1; exit}' || true)
  [ -n "$addr" ] && iface=$(ip -o route get "$addr" 2>/dev/null | sed -n 's/.* dev \([^ ]*\).*/\1/p' || true)
fi
if [ -n "$iface" ]; then
  export HOROVOD_GLOO_IFACE=${HOROVOD_GLOO_IFACE:-$iface} NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-$iface}
  # Open MPI refuses an include and an exclude list together: an exclude list of yours wins
  [ -n "${OMPI_MCA_btl_tcp_if_exclude:-}" ] || export OMPI_MCA_btl_tcp_if_include=${OMPI_MCA_btl_tcp_if_include:-$iface}
  [ -n "${OMPI_MCA_oob_tcp_if_exclude:-}" ] || export OMPI_MCA_oob_tcp_if_include=${OMPI_MCA_oob_tcp_if_include:-$iface}
fi

# --- hvdgan: from PATH, else from a virtual environment ---------------------------------------------
if ! command -v hvdgan >/dev/null 2>&1; then
  venv=${HVDGAN_VENV:-${SLURM_SUBMIT_DIR:-$PWD}/.venv}
  [ -x "$venv/bin/hvdgan" ] || { say "error: hvdgan is not on PATH and not in $venv (set HVDGAN_VENV)"; exit 2; }
  # shellcheck disable=SC1091
  source "$venv/bin/activate"
fi
[ -f "$JOB" ] || { say "error: job file $JOB not found (relative to $PWD)"; exit 2; }

# --- launcher: srun with PMIx, else mpirun (Open MPI reads the allocation from Slurm) ----------------
launcher=${HVDGAN_LAUNCHER:-}
if [ -z "$launcher" ]; then
  if srun --mpi=list 2>&1 | grep -qw pmix; then launcher=srun; else launcher=mpirun; fi
fi
[ "${HVDGAN_ELASTIC:-0}" = 1 ] && launcher=elastic
case $launcher in
  elastic)
    cmd=(hvdgan launch --elastic --np "${SLURM_NTASKS:-1}" --min-np "${HVDGAN_MIN_NP:-${SLURM_NTASKS_PER_NODE:-1}}"
         --iface "${iface:-lo}" "$JOB" -- --resume auto "$@") ;;
  srun) cmd=(srun --mpi=pmix --kill-on-bad-exit=1) ;;
  mpirun)
    # mpirun answers a TERM (scancel) by killing the ranks odls_base_sigkill_timeout s later (default 1):
    # give them the time to checkpoint (keep it under Slurm's KillWait).
    cmd=(mpirun --bind-to none --map-by slot --mca odls_base_sigkill_timeout "${HVDGAN_KILL_GRACE:-25}")
    [ "$(id -u)" = 0 ] && cmd+=(--allow-run-as-root)
    for name in $(compgen -e | grep -E '^(HOROVOD_|NCCL_|HVDGAN_|HDF5_|OMP_|PYTHON|CUDA_|LD_LIBRARY_PATH$|PATH$)' || true); do
      cmd+=(-x "$name")
    done ;;
  *) say "error: HVDGAN_LAUNCHER=$launcher: use srun or mpirun"; exit 2 ;;
esac
if [ "$launcher" != elastic ]; then  # (hvdgan launch starts its ranks so itself)
  # USR1 and TERM stay blocked (pending, not lost) until hvdgan train has its handlers (hvdgan/dist/stop.py).
  env --block-signal=USR1 true 2>/dev/null && cmd+=(env --block-signal=USR1,TERM)
  cmd+=(hvdgan train --job "$JOB" --resume auto "$@")
fi

say "job ${SLURM_JOB_ID:-?} start ${SLURM_RESTART_COUNT:-0}: ${SLURM_NTASKS:-?} tasks on ${SLURM_JOB_NODELIST:-?}"
say "network interface: ${iface:-(chosen by MPI, Gloo and NCCL)}"
say "$(printf '%q ' "${cmd[@]}")"

# --- run ----------------------------------------------------------------------------------------------
if [ -n "$stopping" ]; then  # a signal before the ranks started: nothing to save
  rc=75
else
  "${cmd[@]}" &
  step=$!
  # A signal that came between the check above and `step=$!` found no step to forward to: forward it now.
  [ -n "$stopping" ] && forward
  # `wait` returns early (status > 128) when a trapped signal arrives: then wait again for the real status.
  while :; do
    trapped=0 rc=0
    wait "$step" || rc=$?
    [ "$trapped" = 1 ] && [ "$rc" -gt 128 ] && continue
    break
  done
  [ -n "${again:-}" ] && kill "$again" 2>/dev/null
  say "ranks exited with status $rc"
  # The USR1 this script forwards can reach a task in its first instant, before `env --block-signal` has
  # run: it dies of it (128 + 10) before hvdgan started, having written nothing. That is a stop too.
  if [ -n "$stopping" ] && [ "$rc" = 138 ]; then
    say "the ranks ended on the forwarded USR1 before hvdgan started: nothing was written"
    rc=75
  fi
fi

# A preemption with a GraceTime signals the tasks only, and the job would end as failed if it stopped before
# the grace time is over: requeue it too (Slurm has set its PreemptTime).
preempted_by_slurm() { scontrol show job "${SLURM_JOB_ID:-}" 2>/dev/null | grep -q 'PreemptTime=[0-9]'; }

case $rc in
  0) say "finished"; exit 0 ;;
  75)
    # (elastic, with no signal: the ranks fell below HVDGAN_MIN_NP or no node of the world was left, and the
    # last commit was written: new nodes continue it)
    if [ "$stopping" = USR1 ] || preempted_by_slurm || { [ "$launcher" = elastic ] && [ -z "$stopping" ]; }; then
      say "stopped with a checkpoint: requeueing job $SLURM_JOB_ID (it resumes from the newest checkpoint)"
      scontrol requeue "$SLURM_JOB_ID" || say "scontrol requeue failed (Slurm requeues a preempted job itself)"
      # Slurm ends this script as it requeues the job; should it not, leave after a while.
      sleep "${HVDGAN_REQUEUE_WAIT:-60}" || true
    else
      say "stopped with a checkpoint (${stopping:-a signal to the ranks}): not requeueing"
    fi
    exit 75 ;;
  *) say "the ranks failed (status $rc): not requeueing"; exit "$rc" ;;
esac
