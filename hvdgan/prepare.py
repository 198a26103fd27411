"""`hvdgan prepare`: open a source at a size the networks take (hvdgan.models), write it as a sharded
dataset (hvdgan.data), optionally verify it, and say what was written."""

from __future__ import annotations

import time

from .data import check_dataset, open_source, write_source
from .dist import horovod as distributed
from .errors import HvdganError
from .models import check_image_size, default_image_size


def prepare(source: str, out: str, shards: int | None = None, per_shard: int | None = None, size: int | None = None,
            channels: int | None = None, compression: str = "none", overwrite: bool = False, workers: int = 1,
            verify: bool = False, shuffle_seed: int | None = 0, progress: bool = True) -> str | None:
    """`hvdgan prepare`: open a source, write the dataset, optionally verify it. Returns the summary
    paragraph on rank 0 (None on other ranks)."""
    if size is not None:
        check_image_size(size, "--size")
    if channels is not None and channels not in (1, 3):
        raise HvdganError(f"--channels: must be 1 or 3, got {channels}")
    src = open_source(source, size=size or default_image_size, channels=channels)
    check_image_size(src.height, f"{source}: --size")
    t0 = time.perf_counter()
    m = write_source(out, src, shards=shards, per_shard=per_shard, compression=compression, overwrite=overwrite,
                     workers=workers, shuffle_seed=shuffle_seed, progress=progress)
    if m is None:
        return None
    seconds = time.perf_counter() - t0
    checked = ""
    if verify:
        problems, _ = check_dataset(out, progress=progress)
        if problems:
            raise HvdganError(f"{out}: --verify found {len(problems)} problem(s): {problems[0]}")
        checked = " Verified: every shard re-read, sizes, sha256 and structure match the manifest."
    _, _, size_ = distributed.launcher_world()
    workers = min(workers, len(m.shards))  # (no more processes than shards are started)
    writers = f"{size_} ranks" if size_ > 1 else f"{workers} process{'es' if workers > 1 else ''}"
    labels = f"{len(m.labels)} classes" if m.labels else "no labels"
    return (f"Wrote {m.count:,} images ({m.height}x{m.width}, {m.channels} channel{'s' if m.channels > 1 else ''}, "
            f"uint8 NCHW; {labels}) from {m.source} into {len(m.shards)} shard{'s' if len(m.shards) > 1 else ''} "
            f"in {out}: {_human(m.total_bytes)}, compression {m.compression}, {seconds:.1f} s "
            f"({m.count / max(seconds, 1e-9):,.0f} images/s) with {writers}.{checked} "
            f"Check it any time with `hvdgan data check {out}`.")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n} B"
