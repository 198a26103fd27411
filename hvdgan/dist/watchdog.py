"""A hung rank must not hang the job: every rank ends itself when no training step completes for
HVDGAN_STALL_TIMEOUT seconds (default 300; 0 turns it off).

A rank that is stopped (SIGSTOP, a frozen node, a dead network link) leaves the others waiting in a
collective that, with MPI, never times out: Horovod's own stall check (HOROVOD_STALL_CHECK_TIME_SECONDS,
HOROVOD_STALL_SHUTDOWN_TIME_SECONDS) runs on rank 0 only, and Gloo's HOROVOD_GLOO_TIMEOUT_SECONDS only
covers Gloo. The watchdog is faulthandler's: a C thread that needs no GIL (the main thread may sit in
Horovod's wait), prints every thread's stack to stderr with "Timeout (h:mm:ss)!" and exits with status 1;
the launcher (srun --kill-on-bad-exit, mpirun, horovodrun) then ends the other ranks. The timeout covers
the longest step plus anything between two steps (sampling, a checkpoint, an epoch's reload): raise it for
large models on slow file systems.

In an elastic run the others must not end themselves: they go on without the hung rank. There, each rank
also has a sentinel process (hvdgan/dist/sentinel.py) that SIGKILLs it after HVDGAN_STOPPED_TIMEOUT
seconds stopped (default 30; 0: no sentinel), which Horovod then treats as a lost rank. A rank that hangs
while running (not stopped) is still ended by this watchdog, on every rank, after HVDGAN_STALL_TIMEOUT.
"""

from __future__ import annotations

import faulthandler
import math
import os
import subprocess
import sys
from pathlib import Path

from ..errors import HvdganError

ENV = "HVDGAN_STALL_TIMEOUT"
DEFAULT_SECONDS = 300.0
STOPPED_ENV = "HVDGAN_STOPPED_TIMEOUT"
STOPPED_DEFAULT_SECONDS = 30.0


def timeout(env: str = ENV, default: float = DEFAULT_SECONDS) -> float:
    raw = os.environ.get(env, "")
    try:
        value = float(raw) if raw.strip() else default
    except ValueError:
        raise HvdganError(f"{env}={raw!r}: not a number of seconds (0 turns it off)") from None
    if not 0 <= value < math.inf:  # (NaN too)
        raise HvdganError(f"{env}={raw!r}: must be a number of seconds >= 0 (0 turns it off)")
    return value


def start_sentinel() -> subprocess.Popen | None:
    """This rank's sentinel (elastic runs): it ends with the rank."""
    seconds = timeout(STOPPED_ENV, STOPPED_DEFAULT_SECONDS)
    if not seconds:
        return None
    script = Path(__file__).with_name("sentinel.py")
    return subprocess.Popen([sys.executable, "-I", str(script), str(os.getpid()), str(seconds)],
                            stdin=subprocess.DEVNULL)


class Watchdog:
    def __init__(self, seconds: float | None = None):
        self.seconds = timeout() if seconds is None else seconds

    def beat(self) -> None:
        """Progress: restart the count (a step completed)."""
        if self.seconds > 0:
            faulthandler.dump_traceback_later(self.seconds, exit=True, file=_stderr())

    def stop(self) -> None:
        cancel()


def _stderr():
    """faulthandler writes to a file descriptor: a stderr without one (a notebook's, a test runner's) gives way
    to the process's own."""
    try:
        sys.stderr.fileno()
        return sys.stderr
    except (AttributeError, OSError, ValueError):  # (io.UnsupportedOperation is both of the last two)
        return sys.__stderr__


def cancel() -> None:
    faulthandler.cancel_dump_traceback_later()
