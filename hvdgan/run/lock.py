"""One training a run directory: rank 0 holds `OUT/.hvdgan.lock` from before it reads the directory until the
run ends. The lock is the kernel's (flock on an open file): a holder that dies, however it dies, releases it,
so a stale lock file is simply taken over. The file names its holder (host, pid, time) for the error a
second start gets. Where flock is not shared (some network file systems), a holder on the same host that
is still alive is detected from the file all the same.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from ..errors import HvdganError

NAME = ".hvdgan.lock"
_HELD: dict[Path, "RunLock"] = {}  # this process's locks (an elastic run's next Trainer takes its own over)


class RunLock:
    def __init__(self, out: Path):
        self.path = Path(out) / NAME
        self.fd: int | None = None

    def acquire(self, take_over: bool = False) -> "RunLock":
        """Take the lock, or fail with one line naming the holder (nothing is written then). `take_over`: a
        lock this process already holds passes to this object (an elastic run's next world)."""
        out = self.path.parent
        if out.is_symlink() and not out.exists():
            raise HvdganError(f"--out {out}: a symbolic link to nothing (or a loop of them); choose another --out")
        if out.exists() and not out.is_dir():
            raise HvdganError(f"--out {out}: exists and is not a directory; choose another --out")
        mine = _HELD.get(self.path.resolve())
        if take_over and mine is not None and mine.fd is not None:  # (flock refuses a second open file)
            self.fd, mine.fd = mine.fd, None
            _HELD[self.path.resolve()] = self
            return self
        try:
            out.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:  # (a read-only parent, a symlink loop, a file on the way)
            raise HvdganError(f"--out {out}: cannot create the run directory or its lock "
                              f"({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            holder = self._holder(fd)
            if holder and self._alive_here(holder):  # flock not shared, but the holder lives
                raise BlockingIOError
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            raise HvdganError(f"{self.path.parent}: in use by another training ({_describe(holder)}); wait for it to "
                              "end or stop it, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode(), 0)
        self.fd = fd
        _HELD[self.path.resolve()] = self
        return self

    def release(self) -> None:
        if _HELD.get(self.path.resolve()) is self:
            del _HELD[self.path.resolve()]
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # (the file stays: removing it would race with a waiting start)
            os.close(self.fd)  # closing releases the flock
            self.fd = None

    @staticmethod
    def _holder(fd: int) -> dict | None:
        try:
            return json.loads(os.pread(fd, 4096, 0).decode() or "null")
        except (OSError, ValueError):
            return None

    @staticmethod
    def _alive_here(holder: dict) -> bool:
        if holder.get("host") != socket.gethostname() or holder.get("pid") == os.getpid():
            return False
        try:
            os.kill(int(holder["pid"]), 0)
        except (ProcessLookupError, KeyError, TypeError, ValueError):
            return False
        except PermissionError:  # alive, another user's
            return True
        try:  # a pid the system gave to another program since
            return b"hvdgan" in Path(f"/proc/{int(holder['pid'])}/cmdline").read_bytes()
        except OSError:
            return True


def _describe(holder: dict | None) -> str:
    if not holder:
        return "holder unknown"
    return f"hvdgan train on {holder.get('host')}, pid {holder.get('pid')}, since {holder.get('since')}"
