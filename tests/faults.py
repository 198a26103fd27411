"""Helpers of the signal and fault tests (tests/test_faults.py, tests/test_slurm_signals.py): one tiny
2-rank job, its uninterrupted reference run (shared by the tests of a session), and the ranks' processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import HVDGAN, ROOT, LAUNCH_SPECS, launch, run_env
from hvdgan.dist.launch import Launch

DEMO = ROOT / "jobs" / "digits-demo.yaml"
N = 60  # steps of the reference job
# tiny models, a step of a few ms: what the tests time is start-up, the signal and the stop
TINY = ["--ngf", "8", "--ndf", "8", "--batch-size", "16", "--log-every", "1", "--threads", "1", "--no-tensorboard",
        "--sample-every", "100000", "--checkpoint-every", "20"]
EXIT_STOPPED = 75


def job_args(data: Path, out: Path, steps: int = N) -> list[str]:
    return ["--job", str(DEMO), "--data", str(data), *TINY, "--max-steps", str(steps), "--out", str(out)]


@pytest.fixture(scope="session")
def reference(digits, tmp_path_factory) -> Path:
    """The job run without interruption (horovodrun --mpi, 2 ranks): its final checkpoint."""
    out = tmp_path_factory.mktemp("reference") / "run"
    launch("mpi", [HVDGAN, "train", *job_args(digits, out)], timeout=300)
    return out / "checkpoints" / f"ckpt-{N:08d}.pt"


def steps_done(out: Path) -> int:
    """The last completed step that rank 0 logged (metrics.jsonl; a half-written last line is skipped)."""
    last = 0
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if "loss_d" in rec:
            last = max(last, rec["step"])
    return last


def stopped(out: Path) -> dict:
    """How the run's result.json says it stopped (status, signal, step, seen_by). Preferred to the launcher's
    output for what rank 0 logs: mpirun forwards each rank's stream in chunks, and another rank's line can
    land inside one of rank 0's."""
    result = json.loads((out / "result.json").read_text())
    return {k: result.get(k) for k in ("status", "signal", "step", "seen_by")}


def logged_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
            if "loss_d" in json.loads(line)]


def checkpoints(out: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (out / "checkpoints").glob("ckpt-*.pt"))


def assert_same_final(run_ckpt: Path, ref_ckpt: Path) -> None:
    a = torch.load(run_ckpt, weights_only=False, map_location="cpu")
    b = torch.load(ref_ckpt, weights_only=False, map_location="cpu")
    for key in ("G", "D", "G_ema"):
        for name, ta in a[key].items():
            if torch.is_tensor(ta) and ta.is_floating_point():
                assert torch.equal(ta, b[key][name]), f"{run_ckpt}: {key}.{name} differs from the uninterrupted run"


RANK_VARS = (b"HOROVOD_RANK", b"OMPI_COMM_WORLD_RANK", b"PMIX_RANK", b"SLURM_PROCID")


def rank_pids(out: Path) -> dict[int, int]:
    """rank -> pid of the `hvdgan train ... --out OUT` processes (launchers and shells excluded)."""
    pids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if len(argv) < 3 or not argv[1].endswith(b"/hvdgan") or argv[2] != b"train" \
                    or str(out).encode() not in argv:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        for var in RANK_VARS:
            if var in env:
                pids[int(env[var])] = int(entry)
                break
    return pids


def catches(pid: int, sig: int) -> bool:
    """Whether the process has a handler for `sig` (/proc/PID/status SigCgt)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = int(next(line for line in f if line.startswith("SigCgt:")).split()[1], 16)
    except (OSError, StopIteration):
        return False
    return bool(mask & (1 << (sig - 1)))


def wait_for(cond, timeout: float, what: str, proc=None, interval: float = 0.05):
    t0 = time.monotonic()
    while True:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"exited {proc.returncode} while waiting for {what}\n{out[-4000:]}")
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"{what}: not after {timeout:.0f}s")
        time.sleep(interval)


def start(launcher: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
    """argv on 2 ranks in the background, in its own process group (kill_group() ends it all)."""
    spec = LAUNCH_SPECS[launcher]
    cmd = Launch(np=2, launcher=spec.launcher, controller=spec.controller).command(argv)
    return subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env or run_env())


def start_launch(flags: list[str], train_args: list[str], env: dict | None = None) -> subprocess.Popen:
    """`hvdgan launch --np 2 FLAGS JOB -- TRAIN_ARGS` in the background, in its own process group."""
    job = train_args[train_args.index("--job") + 1]
    rest = [a for i, a in enumerate(train_args) if a != "--job" and train_args[i - 1:i] != ["--job"]]
    return subprocess.Popen([HVDGAN, "launch", "--np", "2", *flags, job, "--", *rest], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env or run_env())


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def wait_exit(proc: subprocess.Popen, timeout: float) -> tuple[int, str, float]:
    """(status, output, seconds): a launcher that outlives `timeout` fails the test (a hang)."""
    t0 = time.monotonic()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        pytest.fail(f"still running {timeout:.0f}s later (a hang)")
    return proc.returncode, out, time.monotonic() - t0
