"""Checkpoints: everything needed to continue a run exactly, written atomically by rank 0.

A checkpoint holds G, D, G's EMA, both optimizers, the step/epoch/data position, every rank's RNG
states, the configuration and the architectures. Tensors are saved on the CPU, so a checkpoint does
not depend on where the networks were placed.

Safety:
- files are written to a temporary file, fsync'd and renamed, with the umask's permissions (a group
  project directory can share them); leftover temporary files of a crashed write are removed;
- they are read with `torch.load(weights_only=True)`: a file that holds code is refused, never run;
- nothing non-finite is written (`check_finite`);
- `--resume auto` takes the newest readable checkpoint and says which unreadable ones it skipped.
"""

from __future__ import annotations

import io
import logging
import math
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch

from ..errors import HvdganError

log = logging.getLogger("hvdgan")
NAME = re.compile(r"^ckpt-(\d{8})\.pt$")
TMP = re.compile(r"^\.ckpt-(\d{8}|best)\.pt\..*\.tmp$")
BEST = "ckpt-best.pt"


def path_for(directory: Path, step: int) -> Path:
    return Path(directory) / f"ckpt-{step:08d}.pt"


def step_of(path: Path) -> int | None:
    m = NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


def to_cpu(obj: Any, copy: bool = False) -> Any:
    """`obj` with its tensors on the CPU; `copy`: every tensor a copy (a CPU tensor too), so that the result
    does not change with the training (an elastic commit, hvdgan.run.elastic)."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=copy)
    if isinstance(obj, dict):
        return {k: to_cpu(v, copy) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v, copy) for v in obj)
    return obj


def file_mode() -> int:
    """The permissions a new file gets under the umask (mkstemp makes 0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def first_non_finite(obj: Any, where: str = "") -> str | None:
    """The key path of the first floating-point tensor (or float) in `obj` holding NaN or inf, else None."""
    if torch.is_tensor(obj):
        if obj.is_floating_point() and not torch.isfinite(obj).all():
            return where or "tensor"
        return None
    if isinstance(obj, float):
        return None if math.isfinite(obj) else where
    if isinstance(obj, dict):
        items: Iterable = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for k, v in items:
        found = first_non_finite(v, f"{where}.{k}" if where else str(k))
        if found:
            return found
    return None


def save(state: dict, directory: Path, step: int, keep: int, protect: Iterable[Path] = ()) -> Path:
    """Write `state` as ckpt-<step>.pt: temporary file, fsync, rename, fsync the directory; then keep
    only the newest `keep` checkpoints (never one in `protect`, e.g. the one this run resumed from).
    A crash or a full disk at any point leaves the previous checkpoints intact; the error names the
    file and the cause."""
    final = write_atomic(state, path_for(directory, step))
    keep_safe = {Path(p).resolve() for p in protect}
    for old in list_checkpoints(directory)[:-keep]:
        if old.resolve() not in keep_safe:
            old.unlink(missing_ok=True)
    return final


def write_atomic(state: dict, final: Path) -> Path:
    """Temporary file, fsync, rename, fsync the directory: `final` is the old file or the new one."""
    final = Path(final)
    directory = final.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=directory)
    try:
        buf = io.BytesIO()  # serialise first: torch's zip writer turns a full disk into an opaque RuntimeError
        torch.save(to_cpu(state), buf)
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())  # mkstemp makes 0600; checkpoints follow the umask like any file
        os.replace(tmp, final)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise HvdganError(f"{final}: could not write the checkpoint ({exc.strerror or exc}); "
                          "the previous checkpoints are intact") from None
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


def remove_temporaries(directory: Path) -> list[Path]:
    """Remove the temporary files a crashed or interrupted write left behind; returns them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if TMP.match(p.name)]
    for p in found:
        p.unlink(missing_ok=True)
    return found


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if NAME.match(p.name))


def load(path: Path) -> dict:
    """Read a checkpoint with weights_only=True: tensors and plain Python values only, so a file that
    carries code (a pickled object with __reduce__) is refused and its code never runs."""
    path = Path(path)
    check_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HvdganError(f"{path}: refused: the file holds more than tensors and plain values, and is loaded "
                          f"with weights_only=True so that no code in it runs ({first[:200]})") from None
    except Exception as exc:
        raise HvdganError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "G" not in state or "arch" not in state:
        raise HvdganError(f"{path}: not an hvdgan checkpoint (no generator or architecture in it)")
    return state


def check_file(path: Path) -> None:
    """What can be told of a checkpoint without reading it (cheap): it is there, and it is a file torch.save
    can have written, whole."""
    if not Path(path).is_file():
        raise HvdganError(f"{path}: checkpoint not found")
    why = _not_torch(Path(path))
    if why:
        raise HvdganError(f"{path}: not a readable checkpoint: {why}")


def _not_torch(path: Path) -> str | None:
    """Why `path` cannot be what torch.save writes (a zip file; a pickle before torch 1.6), in words a user can
    act on instead of the unpickler's; None when it may be."""
    import zipfile

    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        return exc.strerror or str(exc)
    if head.startswith(b"PK"):
        return None if zipfile.is_zipfile(path) else "truncated (the zip file torch.save writes ends early)"
    return None if head[:1] == b"\x80" else "not a file torch.save writes"


def newest_readable(directory: Path) -> tuple[Path | None, dict | None]:
    """--resume auto: the newest checkpoint that loads, with its state; unreadable newer ones are skipped
    with a warning that names both files."""
    skipped = []
    for path in reversed(list_checkpoints(directory)):
        try:
            state = load(path)
        except HvdganError as exc:
            skipped.append(path)
            log.warning("skipping unreadable checkpoint %s", exc.message)
            continue
        if skipped:
            log.warning("resuming from %s instead of the newer, unreadable %s", path,
                        ", ".join(str(p) for p in skipped))
        return path, state
    if skipped:
        raise HvdganError(f"{directory}: no readable checkpoint ({len(skipped)} unreadable: "
                          f"{', '.join(p.name for p in skipped)})")
    return None, None


def check_architecture(path: Path, saved: dict, current: dict) -> None:
    """Refuse to resume into a network that differs from the one the checkpoint was written with."""
    for net in ("G", "D"):
        if saved.get(net) != current[net]:
            # every key of either side (a key only the checkpoint has is a difference too; DCGAN's record
            # has no "model" key: hvdgan.models.zoo.architecture)
            was = {"model": "dcgan", **(saved.get(net) if isinstance(saved.get(net), dict) else {})}
            now = {"model": "dcgan", **current[net]}
            diff = {k: (was.get(k), now.get(k)) for k in dict.fromkeys([*now, *was]) if was.get(k) != now.get(k)}
            what = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise HvdganError(f"{path}: written for another {net} architecture "
                              f"({what or f'checkpoint {saved.get(net)!r} vs now {current[net]!r}'})")
