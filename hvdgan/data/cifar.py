"""The CIFAR-10 python archive (cifar-10-python.tar.gz) or its extracted folder, as a source of `hvdgan
prepare`: the five training batches, unpickled safely (numpy arrays and plain values only)."""

from __future__ import annotations

import functools
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from ..errors import HvdganError
from .sources import _Source, _stamp

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


class _SafeUnpickler(pickle.Unpickler):
    """CIFAR-10's batches are pickles: allow numpy arrays and nothing else (no code from the archive runs)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"), ("copy_reg", "_reconstructor"),
               ("copyreg", "_reconstructor"), ("__builtin__", "object"), ("builtins", "object")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(data: bytes, what: str) -> dict:
    try:
        doc = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:
        raise HvdganError(f"{what}: not a CIFAR-10 python batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict):
        raise HvdganError(f"{what}: not a CIFAR-10 python batch (a {type(doc).__name__}, expected a dict)")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in doc.items()}


def is_cifar_dir(p: Path) -> Path | None:
    for d in (p, p / CIFAR_DIR):
        if (d / "data_batch_1").is_file() or (d / "batches.meta").is_file():
            return d
    return None


def _cifar_members(path: Path) -> dict[str, bytes]:
    names = CIFAR_TRAIN + ("batches.meta",)
    found: dict[str, bytes] = {}
    if path.is_dir():
        d = is_cifar_dir(path)
        for n in names:
            f = d / n
            if f.is_file():
                found[n] = f.read_bytes()
        where = str(d)
    else:
        try:
            with tarfile.open(path) as tar:
                for member in tar:
                    base = os.path.basename(member.name)
                    if member.isfile() and base in names and base not in found:
                        found[base] = tar.extractfile(member).read()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise HvdganError(f"{path}: not a readable tar archive ({exc}); download cifar-10-python.tar.gz again") from None
        where = str(path)
    missing = [n for n in names if n not in found]
    if missing:
        raise HvdganError(f"{where}: not the CIFAR-10 python version: missing {', '.join(missing)} "
                          "(expected data_batch_1..5 and batches.meta from cifar-10-python.tar.gz)")
    return found


@functools.lru_cache(maxsize=2)
def _cifar(path: str, _stamp) -> tuple[np.ndarray, np.ndarray, list[str]]:
    members = _cifar_members(Path(path))
    images, labels = [], []
    for n in CIFAR_TRAIN:
        what = f"{path}:{n}"
        doc = _unpickle(members[n], what)
        data, lab = doc.get("data"), doc.get("labels")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise HvdganError(f"{what}: 'data' must be uint8 [n, 3072] (RGB planes of 32x32), got {got}")
        if lab is None or len(lab) != len(data):
            raise HvdganError(f"{what}: 'labels' must list one label per image ({len(data)})")
        images.append(data.reshape(-1, 3, 32, 32))  # row-major R, G, B planes: already NCHW
        labels.append(np.asarray(lab, dtype=np.int64))
    meta = _unpickle(members["batches.meta"], f"{path}:batches.meta")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get("label_names", [])]
    lab = np.concatenate(labels)
    if not names or lab.min() < 0 or lab.max() >= len(names):
        raise HvdganError(f"{path}:batches.meta: label_names ({len(names)}) do not cover the labels 0..{lab.max()}")
    return np.concatenate(images), lab, names


class CifarSource(_Source):
    """CIFAR-10, python version: the 50,000 training images (data_batch_1..5) with their 10 labels."""

    def __init__(self, path: Path, size=None, channels=None):
        super().__init__(str(path), size, channels, (3, 32, 32))
        self.path = path
        images, labels, names = self._load()
        self.count = len(images)
        self.label_names = names

    def describe(self) -> str:
        return f"CIFAR-10 {self.path} (training batches)"

    def _load(self):
        return _cifar(str(self.path), _stamp(self.path))

    def _arrays(self):
        images, labels, _ = self._load()
        return images, labels
