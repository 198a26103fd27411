"""Signals, dead and hung ranks outside Slurm (the Slurm side: tests/test_slurm_signals.py).

- USR1/TERM to one rank at any moment: every rank stops after the same step, with a checkpoint of the last
  completed step, exit status 75; `--resume auto` then ends with the same parameters as an uninterrupted run.
- A rank SIGKILLed mid-step, under horovodrun --gloo, horovodrun --mpi and mpirun: every other rank ends
  within 60 s, non-zero; `--resume auto` continues from the newest checkpoint.
- A rank SIGSTOPped (a hung node): the watchdog (HVDGAN_STALL_TIMEOUT) ends the job.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest
import torch

from conftest import HVDGAN, ROOT, launch, run_env
from faults import (DEMO, EXIT_STOPPED, N, assert_same_final, catches, checkpoints, job_args, kill_group, logged_steps,
                    rank_pids, reference, start, start_launch, steps_done, stopped, wait_exit, wait_for)  # noqa: F401

# `hvdgan launch` FLAGS per launcher it composes
LAUNCH_FLAGS = {"mpi": ["--mpi"], "gloo": ["--gloo"], "mpirun": ["--launcher", "mpirun"]}


def test_usr1_to_one_rank_mid_run_stops_every_rank_at_one_step(digits, reference, tmp_path):
    out = tmp_path / "run"
    proc = start("mpirun", [HVDGAN, "train", *job_args(digits, out)])
    try:
        wait_for(lambda: steps_done(out) >= 3, 240, "step 3", proc)
        pid = rank_pids(out)[1]  # one rank only: the decision must still be every rank's
        before = set(checkpoints(out))
        os.kill(pid, signal.SIGUSR1)
        t0 = time.monotonic()
        wait_for(lambda: set(checkpoints(out)) - before, 60, "the checkpoint", interval=0.01)
        to_ckpt = time.monotonic() - t0
        rc, text, seconds = wait_exit(proc, 60)
    finally:
        kill_group(proc)
    assert rc == EXIT_STOPPED, text[-4000:]
    last = steps_done(out)
    assert 3 <= last < N, text[-4000:]
    assert checkpoints(out)[-1] == last, (checkpoints(out), last)  # the last completed step, nothing lost
    assert stopped(out) == {"status": "preempted", "signal": "a signal on another rank", "step": last,
                           "seen_by": [1]}, text[-4000:]
    print(f"USR1 to rank 1 at step >= 3: every rank stopped at step {last}, checkpoint {to_ckpt:.1f}s and "
          f"exit 75 {to_ckpt + seconds:.1f}s after the signal")
    assert to_ckpt < 30

    done = launch("mpirun", [HVDGAN, "train", *job_args(digits, out), "--resume", "auto"], timeout=300)
    assert f"resumed from {out}/checkpoints/ckpt-{last:08d}.pt at step {last}" in done.stderr + done.stdout
    assert logged_steps(out) == list(range(1, N + 1))  # no step lost, none repeated
    assert_same_final(out / "checkpoints" / f"ckpt-{N:08d}.pt", reference)


def test_term_during_start_up_exits_75_and_the_restart_is_exact(digits, reference, tmp_path):
    """TERM (as scancel sends it to every task) after the handler is installed and before step 1: a clean
    exit 75, nothing written; the next start runs the whole job as if nothing had happened."""
    out = tmp_path / "run"
    proc = start("gloo", [HVDGAN, "train", *job_args(digits, out)])
    try:
        pids = wait_for(lambda: (lambda p: p if len(p) == 2 and all(catches(x, signal.SIGTERM) for x in p.values())
                                 else None)(rank_pids(out)), 120, "both ranks' handlers", proc, interval=0.01)
        for pid in pids.values():
            os.kill(pid, signal.SIGTERM)
        rc, text, seconds = wait_exit(proc, 120)
    finally:
        kill_group(proc)
    assert rc != 0 and "preempted at step 0 before training (SIGTERM)" in text, text[-4000:]
    assert steps_done(out) == 0 and not (out / "checkpoints").exists(), text[-4000:]
    print(f"TERM during start-up: clean stop {seconds:.1f}s later")

    launch("gloo", [HVDGAN, "train", *job_args(digits, out), "--resume", "auto"], timeout=300)
    assert logged_steps(out) == list(range(1, N + 1))
    assert_same_final(out / "checkpoints" / f"ckpt-{N:08d}.pt", reference)


def test_hvdgan_train_exits_75_on_a_signal(digits, tmp_path):
    """One process, no launcher in between: the status itself is hvdgan's (75), a message says what to do."""
    out = tmp_path / "run"
    proc = start_single([HVDGAN, "train", *job_args(digits, out, steps=100000)])
    try:
        wait_for(lambda: steps_done(out) >= 2, 240, "step 2", proc)
        proc.send_signal(signal.SIGUSR1)
        rc, text, _ = wait_exit(proc, 60)
    finally:
        kill_group(proc)
    assert rc == EXIT_STOPPED, text[-3000:]
    assert re.search(r"preempted at step \d+ \(signal SIGUSR1\): resume with --resume auto; exit status 75", text)
    assert checkpoints(out)[-1] == steps_done(out)


def start_single(argv):
    import subprocess

    return subprocess.Popen(argv, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=run_env())


@pytest.mark.parametrize("launcher,victim", [("gloo", 0), ("mpi", 1), ("mpirun", 1)])
def test_a_rank_killed_mid_step_ends_the_job_and_resume_continues(digits, tmp_path, launcher, victim):
    out = tmp_path / "run"
    args = job_args(digits, out, steps=100000)
    args[args.index("--checkpoint-every") + 1] = "3"
    proc = start(launcher, [HVDGAN, "train", *args])
    try:
        wait_for(lambda: steps_done(out) >= 7, 240, "step 7", proc)
        os.kill(rank_pids(out)[victim], signal.SIGKILL)
        rc, text, seconds = wait_exit(proc, 90)
        left = rank_pids(out)
    finally:
        kill_group(proc)
    print(f"{launcher}: rank {victim} SIGKILLed: the job ended (status {rc}) {seconds:.1f}s later")
    assert rc != 0 and seconds < 60 and not left, (rc, seconds, left, text[-3000:])
    newest = checkpoints(out)[-1]
    assert newest >= 6
    state = torch.load(out / "checkpoints" / f"ckpt-{newest:08d}.pt", weights_only=False, map_location="cpu")
    assert state["step"] == newest  # the newest checkpoint is whole
    if launcher != "gloo":  # resuming does not depend on the launcher: once is enough (and under srun)
        return
    done = launch(launcher, [HVDGAN, "train", *args[:-4], "--out", str(out), "--max-steps", str(newest + 2),
                             "--resume", "auto"], timeout=300)
    assert f"resumed from {out}/checkpoints/ckpt-{newest:08d}.pt at step {newest}" in done.stdout + done.stderr
    assert checkpoints(out)[-1] == newest + 2


@pytest.mark.parametrize("launcher,victim", [("mpirun", 0)])  # no MPI time-out, no stall shutdown for rank 0
def test_a_hung_rank_ends_the_job_within_the_stall_timeout(digits, tmp_path, launcher, victim):
    out = tmp_path / "run"
    timeout = 8
    proc = start(launcher, [HVDGAN, "train", *job_args(digits, out, steps=100000)],
                 env=run_env(HVDGAN_STALL_TIMEOUT=str(timeout)))
    try:
        wait_for(lambda: steps_done(out) >= 3, 240, "step 3", proc)
        pid = rank_pids(out)[victim]
        os.kill(pid, signal.SIGSTOP)
        rc, text, seconds = wait_exit(proc, timeout + 60)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, UnboundLocalError):
            pass
        kill_group(proc)
    print(f"{launcher}: rank {victim} SIGSTOPped: the job ended (status {rc}) {seconds:.1f}s later")
    assert rc != 0, text[-3000:]
    assert "Timeout (0:00:08)!" in text, text[-3000:]
    assert timeout - 1 < seconds < timeout + 30, seconds


def test_stall_timeout_setting(monkeypatch):
    from hvdgan.dist import watchdog
    from hvdgan.errors import HvdganError

    monkeypatch.delenv(watchdog.ENV, raising=False)
    assert watchdog.timeout() == watchdog.DEFAULT_SECONDS == 300
    monkeypatch.setenv(watchdog.ENV, "0")
    assert watchdog.timeout() == 0  # off
    for bad in ("soon", "-5"):
        monkeypatch.setenv(watchdog.ENV, bad)
        with pytest.raises(HvdganError, match=f"HVDGAN_STALL_TIMEOUT='{bad}'"):
            watchdog.timeout()


def _running(pid: int) -> bool:
    """Whether the process exists and is not a zombie (an exited child nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.mp
@pytest.mark.parametrize("launcher", ["mpirun", "gloo", "mpi", "hvdgan launch"])
def test_no_rank_outlives_a_killed_launcher(digits, tmp_path, launcher):
    """SIGKILL to the launcher alone (mpirun, horovodrun --gloo, horovodrun in MPI mode, `hvdgan launch`):
    every rank is gone within 30 s and the newest checkpoint is whole. (Open MPI's ranks end when mpirun is
    gone; horovodrun --gloo's middleman ends its ranks; horovodrun in MPI mode used to leave mpirun and the
    ranks running: patches/; `hvdgan launch`'s launcher dies with it: PR_SET_PDEATHSIG.)"""
    from hvdgan.run import checkpoint as ckpt

    out = tmp_path / "run"
    args = job_args(digits, out, steps=100_000)
    proc = start_launch([], args) if launcher == "hvdgan launch" else start(launcher, [HVDGAN, "train", *args])
    try:
        wait_for(lambda: checkpoints(out) and len(rank_pids(out)) == 2, 240, "a checkpoint", proc)
        ranks = rank_pids(out)
        os.kill(proc.pid, signal.SIGKILL)  # the launcher alone: its process group lives on
        t0 = time.monotonic()
        wait_for(lambda: not any(_running(pid) for pid in ranks.values()), 30, "every rank gone")
        seconds = time.monotonic() - t0
    finally:
        kill_group(proc)
    state = ckpt.load(out / "checkpoints" / f"ckpt-{checkpoints(out)[-1]:08d}.pt")
    assert state["step"] == checkpoints(out)[-1]
    print(f"{launcher} SIGKILLed: every rank gone {seconds:.1f}s later")


def signal_the_launcher(proc, out, signals, pause: float = 1.0) -> tuple[int, str, float]:
    """Once training runs (step 3, both ranks up), send `signals` to the launcher alone, `pause` s apart;
    (its exit status, its output, the seconds from the first signal until every rank was gone). A rank
    still there 30 s later, or a launcher 30 s after that, fails the test."""
    try:
        wait_for(lambda: steps_done(out) >= 3 and len(rank_pids(out)) == 2, 240, "step 3", proc)
        ranks = rank_pids(out)
        t0 = time.monotonic()
        for i, sig in enumerate(signals):
            if i:
                time.sleep(pause)
            os.kill(proc.pid, sig)
        wait_for(lambda: not any(_running(pid) for pid in ranks.values()), 30, "every rank gone")
        seconds = time.monotonic() - t0
        rc, text, _ = wait_exit(proc, 30)
    finally:
        kill_group(proc)
    return rc, text, seconds


@pytest.mark.mp
@pytest.mark.parametrize("launcher", ["mpi", "gloo", "mpirun"])
def test_term_to_the_launcher_checkpoints_and_leaves_no_rank(digits, tmp_path, launcher):
    """TERM to the launcher alone (a scheduler without Slurm's script, `timeout`): the ranks checkpoint the
    step in progress and every one is gone within 30 s. (horovodrun in MPI mode used to leave mpirun and
    the ranks training on as orphans: patches/.)"""
    out = tmp_path / "run"
    proc = start(launcher, [HVDGAN, "train", *job_args(digits, out, steps=100_000)])
    rc, text, seconds = signal_the_launcher(proc, out, [signal.SIGTERM])
    last = steps_done(out)
    assert checkpoints(out)[-1] == last, text[-4000:]
    assert stopped(out) == {"status": "preempted", "signal": "SIGTERM", "step": last, "seen_by": [0, 1]}, text[-4000:]
    print(f"{launcher}: TERM to the launcher: checkpoint of step {last}, every rank gone {seconds:.1f}s "
          f"later, launcher status {rc}")


@pytest.mark.mp
@pytest.mark.parametrize("launcher,sig", [("mpi", signal.SIGTERM), ("gloo", signal.SIGINT), ("mpirun", signal.SIGHUP)])
def test_a_signal_to_hvdgan_launch_stops_with_75_and_resumes_exactly(digits, reference, tmp_path, launcher, sig):
    """TERM, INT (Ctrl-C) or HUP (a closed terminal) to `hvdgan launch` alone, whichever launcher it runs: a
    checkpoint of the step in progress, every rank gone within 30 s, exit status 75; `--resume auto` then
    ends bit-identical to an uninterrupted run."""
    out = tmp_path / "run"
    proc = start_launch(LAUNCH_FLAGS[launcher], job_args(digits, out))
    rc, text, seconds = signal_the_launcher(proc, out, [sig])
    last = steps_done(out)
    assert rc == EXIT_STOPPED and 3 <= last < N, text[-4000:]
    assert checkpoints(out)[-1] == last, (checkpoints(out), last)
    assert f"hvdgan launch: {sig.name}: every rank stops after its step, with a checkpoint" in text, text[-4000:]
    print(f"{sig.name} to hvdgan launch ({launcher}): checkpoint of step {last}, every rank gone {seconds:.1f}s "
          f"later, exit status {rc}")

    done = start_launch(LAUNCH_FLAGS[launcher], [*job_args(digits, out), "--resume", "auto"])
    rc, text, _ = wait_exit(done, 300)
    assert rc == 0, text[-4000:]
    assert logged_steps(out) == list(range(1, N + 1))
    assert_same_final(out / "checkpoints" / f"ckpt-{N:08d}.pt", reference)


# ------------------------------------------------------------------------- schedulers other than Slurm
def _scheduler_run(kind: str, digits, tmp_path):
    """schedulers/pbs.sh and schedulers/lsf.sh as PBS and LSF start them (their node file: this host twice),
    or the `timeout` line of docs/cluster.md. (argv, env, the stop signals in the scheduler's order)"""
    out = tmp_path / "run"
    args = job_args(digits, out, steps=100_000)[2:]  # (the job file: JOB)
    nodes = tmp_path / "nodes"
    nodes.write_text("localhost\nlocalhost\n")
    env = run_env(JOB=str(DEMO))
    if kind == "pbs":  # qdel: TERM, KILL kill_delay later
        env.update(PBS_NODEFILE=str(nodes), PBS_O_WORKDIR=str(ROOT))
        return out, ["bash", str(ROOT / "schedulers" / "pbs.sh"), *args], env, [signal.SIGTERM]
    if kind == "lsf":  # bkill: INT, then TERM (JOB_TERMINATE_INTERVAL later), then KILL
        env.update(LSB_DJOB_HOSTFILE=str(nodes), LS_SUBCWD=str(ROOT))
        return out, ["bash", str(ROOT / "schedulers" / "lsf.sh"), *args], env, [signal.SIGINT, signal.SIGTERM]
    # timeout: TERM to its command when the time is up (its alarm, sent here once training runs), KILL
    # --kill-after later
    return out, ["timeout", "--preserve-status", "--kill-after=60", "1000", HVDGAN, "launch", "--np", "2",
                 str(DEMO), "--", *args], env, [signal.SIGALRM]


@pytest.mark.mp
@pytest.mark.parametrize("kind", ["pbs", "lsf", "timeout"])
def test_other_schedulers_stop_with_a_checkpoint_and_75(digits, tmp_path, kind):
    """The job scripts of docs/cluster.md's "Other schedulers", sent what their scheduler sends to end a job:
    a checkpoint of the step in progress, every rank gone, exit status 75."""
    out, argv, env, signals = _scheduler_run(kind, digits, tmp_path)
    proc = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=ROOT)
    rc, text, seconds = signal_the_launcher(proc, out, signals)
    last = steps_done(out)
    assert rc == EXIT_STOPPED and checkpoints(out)[-1] == last, text[-4000:]
    print(f"{kind}: checkpoint of step {last}, every rank gone {seconds:.1f}s after the first signal, exit status {rc}")
