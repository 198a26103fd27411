"""Whole-dataset reads: `hvdgan data check` (every byte of every shard against the manifest) and `read_all`
(every image back in the source's order)."""

from __future__ import annotations

import os

import numpy as np

from ..errors import HvdganError
from .format import (MANIFEST, Manifest, check_file_size, check_shard_structure, labels_outside, open_manifest,
                     open_shard, sha256_file)


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "img", unit_scale: bool = False):
    from tqdm import tqdm

    # disable=None: tqdm shows the bar only on a terminal (batch logs stay clean)
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, disable=None if enabled else True,
                dynamic_ncols=True, leave=False)


def check_dataset(root: str | os.PathLike, progress: bool = False) -> tuple[list[str], Manifest | None]:
    """Re-read the manifest and every shard: sizes, sha256, structure, every image chunk, labels and the
    source-index permutation. Returns (problems, manifest); an empty list means the dataset is sound."""
    try:
        m = open_manifest(root)
    except HvdganError as exc:
        return [exc.message], None
    problems: list[str] = []
    seen = np.zeros(m.count, dtype=bool)
    index_ok = True
    bar = progress_bar(total=m.total_bytes, unit="B", unit_scale=True, desc="check", enabled=progress)
    for i, rec in enumerate(m.shards):
        path = m.shard_path(i)
        try:
            check_file_size(m, i)
            digest = sha256_file(path)
            if digest != rec.sha256:
                problems.append(f"{path}: sha256 {digest[:16]}... does not match {MANIFEST} ({rec.sha256[:16]}...): "
                                "the file changed or is corrupt; restore it or re-create the dataset")
            with open_shard(path) as f:
                check_shard_structure(m, i, f)
                d = f["images"]
                step = 8 * m.chunk_rows
                for a in range(0, rec.count, step):
                    try:
                        d[a:min(a + step, rec.count)]
                    except Exception as exc:  # a filter (gzip/lzf) or I/O error inside the file
                        raise HvdganError(f"{path}: images rows {a}..{min(a + step, rec.count) - 1} cannot be "
                                          f"read ({exc}); the file is corrupt") from None
                if m.has_labels:
                    problem = labels_outside(m, i, f["labels"][:])
                    if problem:
                        problems.append(problem)
                if "index" in f:
                    idx = f["index"][:]
                    if idx.shape != (rec.count,) or idx.size and (idx.min() < 0 or idx.max() >= m.count):
                        problems.append(f"{path}: index out of range 0..{m.count - 1}")
                        index_ok = False
                    elif seen[idx].any():
                        problems.append(f"{path}: index repeats source images already in other shards")
                        index_ok = False
                    else:
                        seen[idx] = True
                else:
                    index_ok = False
        except HvdganError as exc:
            problems.append(exc.message)
            index_ok = False
        bar.update(rec.bytes)
    bar.close()
    if index_ok and not seen.all():
        problems.append(f"{m.root}: the shards' index datasets miss {int((~seen).sum())} source image(s)")
    return problems, m


def read_all(root: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Every image (uint8 [N, C, H, W]) and label, in the source's order (undoing prepare's shuffle)."""
    m = open_manifest(root)
    images = np.empty((m.count, m.channels, m.height, m.width), dtype=np.uint8)
    labels = np.empty(m.count, dtype=np.int64) if m.has_labels else None
    for i, rec in enumerate(m.shards):
        check_file_size(m, i)
        with open_shard(m.shard_path(i)) as f:
            check_shard_structure(m, i, f)
            idx = f["index"][:] if "index" in f else np.arange(m.offsets[i], m.offsets[i] + rec.count)
            images[idx] = f["images"][:]
            if labels is not None:
                labels[idx] = f["labels"][:]
    return images, labels
