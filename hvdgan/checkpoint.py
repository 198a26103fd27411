"""Checkpoints: everything needed to continue a run exactly, written atomically by rank 0.

A checkpoint holds G, D, G's EMA, both optimizers, the step/epoch/data position, every rank's RNG
states, the configuration and the architectures. Tensors are saved on the CPU, so a checkpoint does
not depend on where the networks were placed.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import HvdganError

NAME = re.compile(r"^ckpt-(\d{8})\.pt$")
BEST = "ckpt-best.pt"


def path_for(directory: Path, step: int) -> Path:
    return Path(directory) / f"ckpt-{step:08d}.pt"


def to_cpu(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def save(state: dict, directory: Path, step: int, keep: int) -> Path:
    """Write `state` as ckpt-<step>.pt: temporary file, fsync, rename, fsync the directory; then keep
    only the newest `keep` checkpoints. A crash at any point leaves the previous checkpoints intact."""
    final = write_atomic(state, path_for(directory, step))
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def write_atomic(state: dict, final: Path) -> Path:
    """Temporary file, fsync, rename, fsync the directory: `final` is the old file or the new one."""
    directory = Path(final).parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(to_cpu(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return final


def save_best(state: dict, directory: Path) -> Path:
    """ckpt-best.pt: the checkpoint of the best evaluation so far (not counted in the last K, not
    picked by --resume auto)."""
    return write_atomic(state, Path(directory) / BEST)


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if NAME.match(p.name))


def load(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise HvdganError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise HvdganError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "G" not in state or "arch" not in state:
        raise HvdganError(f"{path}: not an hvdgan checkpoint (no generator or architecture in it)")
    return state


def resolve(resume: str, directory: Path) -> Path | None:
    """--resume none | auto | PATH -> the checkpoint to load, or None to start fresh."""
    if resume in ("none", "", None):
        return None
    if resume == "auto":
        found = list_checkpoints(directory)
        return found[-1] if found else None
    return Path(resume)


def check_architecture(path: Path, saved: dict, current: dict) -> None:
    """Refuse to resume into a network that differs from the one the checkpoint was written with."""
    for net in ("G", "D"):
        if saved.get(net) != current[net]:
            diff = {k: (saved.get(net, {}).get(k), v) for k, v in current[net].items()
                    if saved.get(net, {}).get(k) != v}
            what = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise HvdganError(f"{path}: written for another {net} architecture ({what})")
