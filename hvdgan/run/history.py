"""A run's history stays linear: what lies beyond the step a run resumes from is moved aside, never
deleted and never silently resumed later.

Resuming at step S (an explicit older checkpoint, or `--resume auto` after a crash) moves every
checkpoint of a later step, every metrics.jsonl record of a later step and every sample grid of a later
step into `OUT/abandoned-<time>-from-<S>/`, so that `--resume auto` then follows the new history and
metrics.jsonl reads 1..S, S+1, ... A torn metrics line (a SIGKILL, a full disk, a node crash mid-write)
is dropped with a warning instead of failing every later resume.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from .checkpoint import list_checkpoints, step_of
from .runlog import read_records, write_records

log = logging.getLogger("hvdgan")
SAMPLE = re.compile(r"^step-(\d+)\.png$")


def abandon_after(out: Path, step: int) -> Path | None:
    """Move checkpoints, metrics records and sample grids of steps after `step` into
    OUT/abandoned-<time>-from-<step>/ (created only when there is something to move); returns it."""
    out = Path(out)
    ckpts = [p for p in list_checkpoints(out / "checkpoints") if step_of(p) > step]
    metrics = out / "metrics.jsonl"
    records = read_records(metrics)
    keep = [r for r in records if r.get("step", 0) <= step]
    later = [r for r in records if r.get("step", 0) > step]
    samples_dir = out / "samples"
    samples = sorted(p for p in samples_dir.iterdir() if SAMPLE.match(p.name) and int(SAMPLE.match(p.name)[1]) > step) \
        if samples_dir.is_dir() else []
    torn = metrics.exists() and len(records) != sum(1 for line in metrics.read_text(errors="replace").splitlines()
                                                    if line.strip())
    if not (ckpts or later or samples):
        if torn:
            write_records(metrics, keep)
        return None
    aside = out / f"abandoned-{time.strftime('%Y%m%d-%H%M%S')}-from-{step}"
    n = 1
    while aside.exists():
        n += 1
        aside = out / f"abandoned-{time.strftime('%Y%m%d-%H%M%S')}-from-{step}-{n}"
    for p in ckpts:
        (aside / "checkpoints").mkdir(parents=True, exist_ok=True)
        p.replace(aside / "checkpoints" / p.name)
    for p in samples:
        (aside / "samples").mkdir(parents=True, exist_ok=True)
        p.replace(aside / "samples" / p.name)
    if later:
        aside.mkdir(parents=True, exist_ok=True)
        write_records(aside / "metrics.jsonl", later)
    if later or torn:
        write_records(metrics, keep)
    log.warning("resuming at step %d: moved %d later checkpoint(s), %d metrics record(s) and %d sample grid(s) "
                "aside to %s", step, len(ckpts), len(later), len(samples), aside)
    return aside
