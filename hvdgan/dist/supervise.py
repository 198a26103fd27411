"""`hvdgan launch` stays in front of the launcher it starts, so that a stop from outside (a scheduler, `timeout`,
a closed terminal, Ctrl-C) ends the run the way Slurm's USR1 does, and the exit status says which way it ended.

- The launcher runs in a session of its own: a terminal's Ctrl-C reaches this process alone, instead of the
  launcher and the ranks each on their own. It dies with this process (PR_SET_PDEATHSIG): a SIGKILL to
  `hvdgan launch` ends the launcher, whose own machinery ends the ranks (tests/test_faults.py).
- TERM, INT, HUP and USR1 here become the launcher's gentle stop, which the ranks honour (hvdgan/dist/stop.py:
  the step in progress, one checkpoint, exit 75):
  - to mpirun (horovodrun in MPI mode execs it: patches/) and srun: USR1, which both forward to every rank.
    A TERM would make mpirun kill the ranks one second later (odls_base_sigkill_timeout) and srun at once;
  - to horovodrun --gloo (still Python): TERM, which it passes to every rank, then KILLs 5 s later (Horovod's
    fixed GRACEFUL_TERMINATION_TIME_S).
  The stop is sent again every 5 s until the launcher ends: mpirun forwards a USR1 only to the ranks it has
  started (the ranks start with the stop signals blocked until they have their handlers: launch.train_argv).
- The exit status: 75 when the run's result.json, written during this launch, says "preempted" (horovodrun
  turns the ranks' 75 into 1); otherwise the launcher's own.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..errors import HvdganError
from .stop import EXIT_STOPPED

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
FORWARDS_USR1 = ("mpirun", "orterun", "mpiexec", "prterun", "srun")  # launchers that pass USR1 on to every rank
REPEAT_S = 5.0  # a stop is sent again this often until the launcher ends (as slurm/train.sh does)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the launcher's process, before it runs: SIGKILL when this process dies (Linux; elsewhere a no-op)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _program(pid: int) -> str:
    """The name the process runs as now (/proc/PID/comm: horovodrun becomes mpirun when it execs it)."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def stop_signal(pid: int) -> int:
    """The signal that stops the ranks under this launcher gently (see the module's docstring)."""
    return signal.SIGUSR1 if _program(pid) in FORWARDS_USR1 else signal.SIGTERM


def run_result(out: Path | None, since: float) -> dict | None:
    """The run's result.json when rank 0 wrote it at or after `since` (None: not this launch's, or none)."""
    if out is None:
        return None
    path = Path(out) / "result.json"
    try:
        if path.stat().st_mtime < since:
            return None
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def exit_status(launcher_status: int, result: dict | None, sent: int | None = None) -> int:
    """75 when the ranks stopped on a signal (whatever the launcher made of their 75), or when the launcher
    died of the stop it was sent (then it was still starting, before any rank: nothing was lost); else the
    launcher's status."""
    if result and result.get("status") == "preempted":
        return EXIT_STOPPED
    if sent and launcher_status == 128 + sent:
        return EXIT_STOPPED
    return launcher_status


def supervise(cmd: list[str], out: Path | None) -> int:
    """Run the launcher command until it ends, passing stop signals on as the ranks' stop; its exit status."""
    since = time.time() - 1.0  # (a file system's mtime may be coarser than time.time())
    requested: list[int] = []
    sent: list[int] = []
    proc = None

    def forward(signum, frame):
        if signum:
            requested.append(signum)
        if proc is not None and proc.poll() is None:
            sig = stop_signal(proc.pid)
            if signum and requested.count(signum) == 1:
                _say(f"{signal.Signals(signum).name}: every rank stops after its step, with a checkpoint "
                     f"({signal.Signals(sig).name} to {_program(proc.pid) or cmd[0]})")
            try:
                os.kill(proc.pid, sig)
                sent.append(sig)
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    try:
        if requested:  # stopped before anything started: nothing lost, resume
            return EXIT_STOPPED
        try:
            proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent)
        except OSError as exc:
            raise HvdganError(f"cannot start {cmd[0]}: {exc.strerror or exc}") from None
        while True:
            if requested:  # again and again: a rank that started after the last one gets this one
                forward(0, None)
            try:
                status = proc.wait(timeout=REPEAT_S)
                break
            except subprocess.TimeoutExpired:
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if status < 0:  # the launcher died of a signal: the shell's convention
        status = 128 - status
    result = run_result(out, since)
    final = exit_status(status, result, sent[-1] if sent else None)
    if final != status:
        where = (f"at step {result.get('step')}, newest checkpoint {result.get('checkpoint') or 'none yet'}" if result
                 else "before any rank started")
        _say(f"the run stopped {where} (the launcher's status: {status}); exit status {final}: resume with "
             "--resume auto")
    return final


def _say(text: str) -> None:
    print(f"hvdgan launch: {text}", file=sys.stderr, flush=True)
