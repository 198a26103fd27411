"""The `hvdgan` logger's one handler: `[hvdgan HH:MM:SS] message` lines on stderr, for `train` and `evaluate`."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("hvdgan")


class _Stderr(logging.StreamHandler):
    """A handler writing to sys.stderr as it is when a record comes, not as it was when the handler was made
    (a program or test runner that swaps it between runs in one process would get a closed stream)."""

    stream = property(lambda self: sys.stderr, lambda self, value: None)


def setup_logging() -> None:
    if not log.handlers:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("[hvdgan %(asctime)s] %(message)s", datefmt="%H:%M:%S"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.INFO)
