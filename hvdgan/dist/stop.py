"""Stopping on a signal: every rank stops at the same step, with a checkpoint, within one step.

USR1 (Slurm's `--signal=B:USR1@N` via slurm/train.sh, `scancel --signal=USR1`, `hvdgan launch` passing a stop
on), TERM (`scancel`, a preemption, a time limit, `timeout`, PBS's qdel), INT (Ctrl-C, LSF's bkill) and HUP (a
closed terminal) mean "checkpoint and stop". They may come at any moment, so

- `install()` runs first thing in an `hvdgan train` process (hvdgan/cli.py, before click, torch and
  Horovod are imported): from then on these signals only set a flag, they no longer kill the process;
- `StopFlag` turns the flags of all ranks into one decision without a per-step collective of its own: each
  D update submits a 1-element `allreduce_async_` just before `opt_d.step()`, so Horovod takes it up with
  D's last gradients (same dtype, op and scale: it can fuse it with them) while opt_d.step() waits for
  those anyway; the end of the step reads the result, which has arrived by then (G's update came after).
  A signal that comes during step k stops the run after step k or k + 1 on every rank;
- `StopFlag.now()` is the one synchronous check, before step 1: a run signalled during start-up (Horovod
  init, data, models, loading a checkpoint) exits cleanly without training, and its next start resumes
  from where it was.

A run that stopped on a signal exits with EXIT_STOPPED (75, EX_TEMPFAIL: "try again"), never 0: its
checkpoint is the newest, and `--resume auto` continues it. docs/cluster.md lists every exit status.
"""

from __future__ import annotations

import signal

EXIT_STOPPED = 75  # sysexits.h EX_TEMPFAIL: stopped on a signal, resume with --resume auto
SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

_received = 0  # the first signal number received (0: none)


def _handle(signum, frame) -> None:
    global _received
    if not _received:
        _received = signum


def install() -> None:
    """From now on USR1, TERM, INT and HUP set the stop flag instead of ending the process."""
    for sig in SIGNALS:
        signal.signal(sig, _handle)
    # slurm/train.sh starts the ranks with USR1 and TERM blocked (`env --block-signal`), so that one sent
    # before this point waits instead of killing the process: it arrives now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def ignore_from_now() -> None:
    """The run is over: ignore further stop signals while the process exits. (Python restores the default
    action, death, while it finalizes: slurm/train.sh repeats its USR1 until the ranks are gone, and a
    rank that died of it in its last second would turn a clean exit 75 into a failure, 138.)"""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def received() -> int:
    """The signal that asked this process to stop (0: none)."""
    return _received


def name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


class StopFlag:
    """The collective stop decision of all ranks (see the module's docstring)."""

    def __init__(self, hvd):
        import torch

        self.hvd = hvd
        self.flag = torch.zeros(1)  # float32 on the CPU, as D's gradients on a CPU run: fused with them
        self.handle = None
        self.stop = False

    def submit(self) -> None:
        """Every D update, just before opt_d.step(): this rank's flag joins the cycle of D's gradients."""
        self._collect()
        self.flag.fill_(1.0 if _received else 0.0)
        # hvd: Average, as the gradients, so that Horovod fuses the two (a fusion needs the same op and scale)
        self.handle = self.hvd.allreduce_async_(self.flag, op=self.hvd.Average, name="hvdgan.stop")

    def _collect(self) -> None:
        if self.handle is not None:
            self.stop |= self.hvd.synchronize(self.handle).item() > 0  # hvd: done already (an earlier cycle)
            self.handle = None

    def poll(self) -> bool:
        """After a completed step: True on every rank when any rank had a signal by its last D update."""
        self._collect()
        return self.stop

    def now(self) -> bool:
        """A synchronous check (start-up, before step 1): True on every rank when any rank had a signal."""
        import torch

        self._collect()
        flag = torch.tensor([1.0 if _received else 0.0])
        self.stop |= self.hvd.allreduce(flag, op=self.hvd.Sum, name="hvdgan.stop.now").item() > 0
        return self.stop
