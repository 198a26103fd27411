"""Signals on the real one-node Slurm (tests/slurm_cluster.py): every way Slurm ends a job early, through
`sbatch slurm/train.sh`, each checked for a checkpoint of the last completed step, the requeue (or not)
that docs/cluster.md promises, and, once the job is finished, the same parameters as an uninterrupted run.

    scancel --signal=USR1 --batch   (= the time-limit warning --signal=B:USR1@N)  at start-up and mid-run
    scancel                         TERM to every task, KILL after KillWait (5 s here): srun and mpirun
    preemption                      a job in a higher-priority partition; PreemptMode=REQUEUE, GraceTime
    a rank SIGKILLed                the job fails within 60 s and is not requeued; a new job resumes
"""

from __future__ import annotations

import re
import signal
import os
import time
from pathlib import Path

import pytest

from faults import (N, assert_same_final, checkpoints, job_args, logged_steps, rank_pids,
                    reference, steps_done, wait_for)  # noqa: F401 (fixture)
from slurm_cluster import slurm_cluster  # noqa: F401  (the session fixture)
from test_slurm import TRAIN_SH, DEMO, job_env

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def submit(cluster, workdir: Path, args: list[str], extra=(), env=None) -> tuple[int, Path]:
    log = workdir / "slurm-%j.out"
    jobid = cluster.sbatch([f"--chdir={workdir}", f"--output={log}", "--job-name=hvdgan-signals", *extra,
                            str(TRAIN_SH), str(DEMO), *args], env=dict(job_env(cluster), **(env or {})))
    return jobid, workdir / f"slurm-{jobid}.out"


def text_of(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else "(no log)"


def running(cluster, jobid, log):
    info = cluster.job(jobid)
    assert info["JobState"] in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING"), f"{info}\n{text_of(log)[-4000:]}"
    return info["JobState"] == "RUNNING"


def requeued(cluster, jobid, log, times: int) -> bool:
    """Restarts reached `times`; a job that ended instead fails at once, with its log."""
    info = cluster.job(jobid)
    assert info["Restarts"] == str(times) or info["JobState"] in ("PENDING", "RUNNING", "REQUEUED",
                                                                  "CONFIGURING"), f"{info}\n{text_of(log)[-4000:]}"
    return info["Restarts"] == str(times)


def finish(cluster, digits, workdir, out, reference, env=None):
    """A new job of the same run: it resumes and must end exactly where the uninterrupted run ended."""
    jobid, log = submit(cluster, workdir, job_args(digits, out)[2:], env=env)
    info = cluster.wait(jobid, timeout=300)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{text_of(log)[-4000:]}"
    assert logged_steps(out) == list(range(1, N + 1))  # no step lost, none repeated
    assert_same_final(out / "checkpoints" / f"ckpt-{N:08d}.pt", reference)


def test_usr1_at_start_up_and_mid_run_requeue_and_end_exact(slurm_cluster, digits, reference, tmp_path):
    """The time-limit warning (B:USR1) as `scancel --signal=USR1 --batch` sends it: once while the job
    starts (before step 1), once mid-run. Each time: exit 75, requeue, resume; the end is exact."""
    out = tmp_path / "run"
    jobid, log = submit(slurm_cluster, tmp_path, job_args(digits, out)[2:])
    # (Slurm drops a signal to a batch step that has not started yet: wait for the script's first line)
    wait_for(lambda: running(slurm_cluster, jobid, log) and "start 0:" in text_of(log), 120, "the script")
    slurm_cluster.run(["scancel", "--signal=USR1", "--batch", str(jobid)])  # the ranks' start-up
    wait_for(lambda: requeued(slurm_cluster, jobid, log, 1), 120, "the first requeue")
    # Usually the ranks are still starting (nothing written). On an idle machine a tiny run may already be
    # training when scancel's signal lands: then it must have stopped with a checkpoint of its last step.
    # (A signal during start-up is also tested without Slurm's latency: test_faults.py, TERM at start-up.)
    done = steps_done(out)
    assert done == 0 or done in checkpoints(out), text_of(log)[-4000:]

    wait_for(lambda: steps_done(out) >= done + 3, 240, "3 steps after the requeue")
    slurm_cluster.run(["scancel", "--signal=USR1", "--batch", str(jobid)])  # mid-run
    t0 = time.monotonic()
    wait_for(lambda: "ranks exited with status 75" in text_of(log).split("start 1:")[-1], 60, "the stop")
    stop_s = time.monotonic() - t0
    text = text_of(log)
    stopped = int(re.findall(r"preempted \(SIGUSR1, seen by rank\(s\) [\d,]+\) at step (\d+)", text)[-1])
    assert 3 <= stopped < N and stopped in checkpoints(out), text[-4000:]
    info = slurm_cluster.wait(jobid, timeout=400)
    text = text_of(log)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "2", f"{info}\n{text[-5000:]}"
    assert re.search(rf"resumed from \S+ckpt-{stopped:08d}\.pt at step {stopped}", text), text[-5000:]
    assert logged_steps(out) == list(range(1, N + 1))
    assert_same_final(out / "checkpoints" / f"ckpt-{N:08d}.pt", reference)
    print(f"USR1 at start-up and at step {stopped}: two requeues, exact end; stop {stop_s:.1f}s after scancel")


@pytest.mark.parametrize("launcher", ["srun", "mpirun"])
def test_scancel_checkpoints_before_killwait_and_does_not_requeue(slurm_cluster, digits, reference, tmp_path,
                                                                  launcher):
    out = tmp_path / "run"
    env = {"HVDGAN_LAUNCHER": launcher}
    jobid, log = submit(slurm_cluster, tmp_path, job_args(digits, out)[2:], env=env)
    wait_for(lambda: steps_done(out) >= 3, 240, "step 3")
    t0 = time.monotonic()
    slurm_cluster.run(["scancel", str(jobid)])
    info = slurm_cluster.wait(jobid, timeout=60)
    seconds = time.monotonic() - t0
    time.sleep(1)
    text = text_of(log)
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0", f"{info}\n{text[-4000:]}"
    last = steps_done(out)
    assert checkpoints(out)[-1] == last, (checkpoints(out), last, text[-4000:])
    if launcher == "srun":  # (mpirun, killed at KillWait while it waits to kill the ranks, drops their output)
        # TERM from Slurm, or the USR1 the script sends for it: whichever came first
        assert re.search(rf"preempted \(SIG(TERM|USR1), seen by rank\(s\) [\d,]+\) at step {last}: checkpoint", text), text[-4000:]
    print(f"scancel under {launcher}: checkpoint of step {last}, job ended {seconds:.1f}s after scancel")
    finish(slurm_cluster, digits, tmp_path, out, reference, env=env)


def test_preemption_requeues_and_the_run_continues(slurm_cluster, digits, reference, tmp_path):
    """A job in partition `urgent` (PriorityTier 2) needs the node: Slurm preempts the training job
    (partition `debug`, PreemptMode=REQUEUE, GraceTime): TERM, checkpoint, requeue, resume, exact end."""
    out = tmp_path / "run"
    jobid, log = submit(slurm_cluster, tmp_path, job_args(digits, out)[2:])
    wait_for(lambda: steps_done(out) >= 3, 240, "step 3")
    urgent = slurm_cluster.sbatch(["--partition=urgent", "--ntasks=2", f"--output={tmp_path}/urgent.out",
                                   "--wrap", "sleep 1"], env=job_env(slurm_cluster))
    t0 = time.monotonic()
    wait_for(lambda: slurm_cluster.job(urgent)["JobState"] == "COMPLETED", 120, "the urgent job")
    print(f"urgent job done {time.monotonic() - t0:.1f}s after its submission")
    info = slurm_cluster.wait(jobid, timeout=400)
    text = text_of(log)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", f"{info}\n{text[-5000:]}"
    stopped = int(re.findall(r"preempted \(SIG(?:TERM|USR1), seen by rank\(s\) [\d,]+\) at step (\d+)", text)[-1])
    assert re.search(rf"resumed from \S+ckpt-{stopped:08d}\.pt at step {stopped}", text), text[-5000:]
    assert logged_steps(out) == list(range(1, N + 1))
    assert_same_final(out / "checkpoints" / f"ckpt-{N:08d}.pt", reference)


def test_a_rank_killed_under_srun_fails_the_job_without_requeue(slurm_cluster, digits, reference, tmp_path):
    out = tmp_path / "run"
    args = job_args(digits, out)[2:]
    args[args.index("--checkpoint-every") + 1] = "3"
    jobid, log = submit(slurm_cluster, tmp_path, args)
    wait_for(lambda: steps_done(out) >= 7, 240, "step 7")
    os.kill(rank_pids(out)[0], signal.SIGKILL)
    t0 = time.monotonic()
    info = slurm_cluster.wait(jobid, timeout=90)
    seconds = time.monotonic() - t0
    text = text_of(log)
    assert info["JobState"] == "FAILED" and info["Restarts"] == "0", f"{info}\n{text[-4000:]}"
    assert "not requeueing" in text and seconds < 60, (seconds, text[-4000:])
    newest = checkpoints(out)[-1]
    print(f"srun: rank 0 SIGKILLed: job FAILED {seconds:.1f}s later; newest checkpoint {newest}")
    finish(slurm_cluster, digits, tmp_path, out, reference)
    logs = "".join(text_of(p) for p in tmp_path.glob("slurm-*.out"))
    assert re.search(rf"resumed from \S+ckpt-{newest:08d}\.pt at step {newest}", logs), logs[-4000:]
