"""A rank's sentinel in an elastic run: it SIGKILLs the rank once the rank has been stopped (SIGSTOP,
state "T" in /proc) for HVDGAN_STOPPED_TIMEOUT seconds, and exits when the rank ends.

A stopped rank runs none of its threads, so it cannot end itself; its TCP connections stay open, so the
other ranks wait on it in a collective, and Horovod's elastic driver waits for it at the next rendezvous,
for ever. Killed, it is a lost rank like any other: the other ranks' collectives fail (at once, or at
their Gloo time-out) and Horovod re-forms the world without its host. Started by hvdgan.dist.watchdog.start_sentinel as `python -I` on
this file: a small process that imports neither torch nor hvdgan.

Only the sentinel's own polling time counts: when the whole job is stopped (`scontrol suspend` stops the
sentinel too), the time it did not run is not taken as the rank's, and a resumed job is left alone.
"""

from __future__ import annotations

import os
import signal
import sys
import time

POLL_S = 1.0


def state(pid: int) -> str:
    """The process's state letter ("R", "S", "T", ...); its name may hold spaces and ")" (proc(5))."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return text[text.rindex(")") + 2]


def watch(pid: int, seconds: float) -> bool:
    """Until the rank ends (False) or has been stopped for `seconds` (True: killed)."""
    stopped, last = 0.0, time.monotonic()
    while True:
        time.sleep(POLL_S)
        now = time.monotonic()
        gap, last = now - last, now
        if os.getppid() != pid:  # (the rank has ended: this process was handed to another parent)
            return False
        try:
            letter = state(pid)
        except (OSError, ValueError, IndexError):
            return False
        if letter != "T":
            stopped = 0.0
        elif gap < 3 * POLL_S:  # (a longer gap: this process was stopped too, see the docstring)
            stopped += gap
        if stopped >= seconds:
            print(f"hvdgan: the rank with pid {pid} has been stopped (SIGSTOP) for {stopped:.0f}s: SIGKILL, so "
                  "that the elastic run goes on without it (HVDGAN_STOPPED_TIMEOUT)", file=sys.stderr, flush=True)
            os.kill(pid, signal.SIGKILL)
            return True


if __name__ == "__main__":
    watch(int(sys.argv[1]), float(sys.argv[2]))
