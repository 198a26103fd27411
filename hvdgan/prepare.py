"""`hvdgan prepare`: open a source at a size the networks take (hvdgan.models), write it as a sharded
dataset (hvdgan.data), optionally verify it, and say what was written."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .data import HOLDOUT, check_dataset, open_source, write_source
from .data.sources import split_holdout
from .dist import horovod as distributed
from .errors import HvdganError
from .models import check_image_size, default_image_size


def prepare(source: str, out: str, shards: int | None = None, per_shard: int | None = None, size: int | None = None,
            channels: int | None = None, compression: str = "none", overwrite: bool = False, workers: int = 1,
            verify: bool = False, shuffle_seed: int | None = 0, progress: bool = True,
            holdout: str | None = None) -> str | None:
    """`hvdgan prepare`: open a source, write the dataset (and its held-out split in OUT/holdout), optionally
    verify it. Returns the summary paragraph on rank 0 (None on other ranks)."""
    if size is not None:
        check_image_size(size, "--size")
    if channels is not None and channels not in (1, 3):
        raise HvdganError(f"--channels: must be 1 or 3, got {channels}")
    src = open_source(source, size=size or default_image_size, channels=channels)
    check_image_size(src.height, f"{source}: --size")
    n_held = holdout_count(holdout, src.count)
    held_dir = Path(out) / HOLDOUT
    if held_dir.exists() and not overwrite:  # (a training set with another's held-out images would be scored wrong)
        raise HvdganError(f"{held_dir}: already holds a held-out split; pass --overwrite to replace the dataset")
    t0 = time.perf_counter()
    train, held = split_holdout(src, n_held, shuffle_seed) if n_held else (src, None)
    written = {}
    for where, part in ((out, train), (held_dir, held)):
        if part is not None:
            written[where] = write_source(where, part, shards=shards if where == out else None, per_shard=per_shard,
                                          compression=compression, overwrite=overwrite, workers=workers,
                                          shuffle_seed=shuffle_seed, progress=progress)
    m = written[out]
    if m is None:
        return None
    if held is None and held_dir.exists():  # an overwrite without --holdout: the old split went with the old set
        shutil.rmtree(held_dir)
    seconds = time.perf_counter() - t0
    checked = ""
    if verify:
        for where in written:
            problems, _ = check_dataset(where, progress=progress)
            if problems:
                raise HvdganError(f"{where}: --verify found {len(problems)} problem(s): {problems[0]}")
        checked = " Verified: every shard re-read, sizes, sha256 and structure match the manifest."
    if held is not None:
        checked += (f" Held out: {held.count:,} images in {held_dir} (evaluate and --eval-every measure against "
                    "them).")
    _, _, size_ = distributed.launcher_world()
    workers = min(workers, len(m.shards))  # (no more processes than shards are started)
    writers = f"{size_} ranks" if size_ > 1 else f"{workers} process{'es' if workers > 1 else ''}"
    labels = f"{len(m.labels)} classes" if m.labels else "no labels"
    return (f"Wrote {m.count:,} images ({m.height}x{m.width}, {m.channels} channel{'s' if m.channels > 1 else ''}, "
            f"uint8 NCHW; {labels}) from {m.source} into {len(m.shards)} shard{'s' if len(m.shards) > 1 else ''} "
            f"in {out}: {_human(m.total_bytes)}, compression {m.compression}, {seconds:.1f} s "
            f"({m.count / max(seconds, 1e-9):,.0f} images/s) with {writers}.{checked} "
            f"Check it any time with `hvdgan data check {out}`.")


def holdout_count(spec: str | None, count: int) -> int:
    """--holdout N (images) or P% (of the source): how many images to hold out (0: none)."""
    if spec in (None, ""):
        return 0
    text = str(spec).strip()
    try:
        n = round(count * float(text[:-1]) / 100) if text.endswith("%") else int(text)
    except ValueError:
        raise HvdganError(f"--holdout: {spec!r} is not a number of images (500) or a percentage (50%)") from None
    if not 1 <= n <= count - 1:
        raise HvdganError(f"--holdout {spec}: holds out {n:,} of the source's {count:,} images; keep at least one "
                          "for each side")
    return n


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n} B"
