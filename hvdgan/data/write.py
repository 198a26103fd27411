"""Writing a sharded dataset (a source in, shards and a manifest out), by worker processes and, under a
launcher, by every rank of the world. The sources it reads are in hvdgan.data.sources; `hvdgan prepare`
is hvdgan.prepare.

No torch at import time: the spawned workers import this module to run `_write_shard`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..dist import horovod as distributed
from ..dist.world import World
from ..errors import HvdganError
from .check import progress_bar
from .format import (COMPRESSIONS, DEFAULT_SHARDS, FORMAT, GZIP_LEVEL, LAYOUT, MANIFEST, SHARD_RE, VERSION, Manifest,
                     ShardRecord, chunk_rows_for, sha256_file, shard_name)
from .sources import ArraySource


@dataclass
class _ShardTask:
    out: str
    index: int
    shards: int
    idx: np.ndarray  # source indices of this shard's images (ascending)
    compression: str
    chunk_rows: int
    shape: tuple  # (C, H, W)
    has_labels: bool
    source: Any = None  # a portable source: the worker reads (and resizes) itself
    images: np.ndarray | None = None  # or the data itself
    labels: np.ndarray | None = None


def _write_shard(task: _ShardTask, progress: Callable[[int], None] | None = None) -> dict:
    """Write one shard (in the calling process: h5py is opened here, never inherited) and return its record."""
    import h5py

    name = shard_name(task.index, task.shards)
    final = Path(task.out) / name
    tmp = final.with_name(f".{name}.tmp{os.getpid()}")
    n = len(task.idx)
    c, h, w = task.shape
    rows = min(task.chunk_rows, n)
    filters = {"none": {}, "gzip": {"compression": "gzip", "compression_opts": GZIP_LEVEL},
               "lzf": {"compression": "lzf"}}[task.compression]
    step = max(task.chunk_rows, (16 << 20) // max(1, c * h * w) // task.chunk_rows * task.chunk_rows)
    raw = {}
    if task.compression == "none":
        # all chunks allocated at creation, one after the other: the reader can map them as one array
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        raw = {"dcpl": dcpl, "fill_time": "never"}
    try:
        # HDF5 >= 1.10 format: a fixed-array chunk index that does not interleave with the chunks
        with h5py.File(tmp, "w", libver=("v110", "v110")) as f:
            images = f.create_dataset("images", shape=(n, c, h, w), dtype=np.uint8, chunks=(rows, c, h, w),
                                      track_times=False, **filters, **raw)
            labels = (f.create_dataset("labels", shape=(n,), dtype=np.int64, chunks=(rows,), track_times=False,
                                       **filters) if task.has_labels else None)
            f.create_dataset("index", data=np.asarray(task.idx, dtype=np.int64), chunks=(rows,), track_times=False)
            for key, value in {"format": FORMAT, "version": VERSION, "shard": task.index, "shards": task.shards,
                               "count": n, "height": h, "width": w, "channels": c, "layout": LAYOUT,
                               "compression": task.compression}.items():
                f.attrs[key] = value
            for a in range(0, n, step):
                b = min(a + step, n)
                if task.images is not None:
                    x, y = task.images[a:b], (task.labels[a:b] if task.labels is not None else None)
                else:
                    x, y = task.source.read(task.idx[a:b])
                if x.shape != (b - a, c, h, w) or x.dtype != np.uint8:
                    raise HvdganError(f"{task.source.describe() if task.source else 'images'}: got a block of shape "
                                      f"{x.shape} and dtype {x.dtype}, expected {(b - a, c, h, w)} uint8")
                images[a:b] = x
                if labels is not None:
                    labels[a:b] = y
                if progress:
                    progress(b - a)
        record = {"file": name, "count": n, "bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)}
        os.replace(tmp, final)
        return record
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise



def plan_shards(count: int, shards: int | None = None, per_shard: int | None = None) -> list[tuple[int, int]]:
    """[start, stop) of each shard. --shards N: N shards whose sizes differ by at most one;
    --per-shard P: ceil(count / P) shards of P images (the last one smaller)."""
    if shards is not None and per_shard is not None:
        raise HvdganError("--shards and --per-shard: give one of them, not both")
    if count < 1:
        raise HvdganError("the source holds no images")
    if per_shard is not None:
        if per_shard < 1:
            raise HvdganError(f"--per-shard: must be >= 1, got {per_shard}")
        return [(a, min(a + per_shard, count)) for a in range(0, count, per_shard)]
    k = DEFAULT_SHARDS if shards is None else shards
    if k < 1:
        raise HvdganError(f"--shards: must be >= 1, got {k}")
    if shards is None:
        k = min(k, count)
    if k > count:
        raise HvdganError(f"--shards: {k} shards for {count} images: every shard needs at least one image; "
                          f"use --shards {count} or fewer")
    return [(i * count // k, (i + 1) * count // k) for i in range(k)]



def _existing_dataset(out: Path) -> list[str]:
    if not out.exists():
        return []
    if not out.is_dir():
        raise HvdganError(f"{out}: exists and is not a directory; choose another OUT")
    return sorted(p.name for p in out.iterdir() if p.name == MANIFEST or SHARD_RE.match(p.name))


def write_source(out: str | os.PathLike, source, shards: int | None = None, per_shard: int | None = None,
                 compression: str = "none", overwrite: bool = False, workers: int = 1, shuffle_seed: int | None = 0,
                 progress: bool = False, use_horovod: bool | None = None) -> Manifest | None:
    """Write `source` (an ArraySource or another source of hvdgan.data.sources) as a sharded dataset in `out`.

    Shards are written by `workers` processes (spawned; each opens only its own files), and under a launcher
    (mpirun/horovodrun/srun, detected from the environment) every rank writes shards i with i % size == rank
    and rank 0 writes the manifest once all shards exist. Returns the manifest (None on ranks other than 0).
    Every phase ends in an agreement: a failure on any rank stops every rank there.
    """
    out = Path(out)
    if compression not in COMPRESSIONS:
        raise HvdganError(f"--compression: {compression!r} is not one of {', '.join(COMPRESSIONS)}")
    if workers < 1:
        raise HvdganError(f"--workers: must be >= 1, got {workers}")
    bounds = plan_shards(source.count, shards, per_shard)
    if use_horovod is None:
        use_horovod = distributed.launcher_world()[0]
    world = World.join(use_horovod)
    created = not out.exists()
    _claim(out, overwrite, world)  # 1. the overwrite policy, before anything is touched
    try:
        tasks = _tasks(out, source, bounds, compression, shuffle_seed, workers, world)  # 2. which images go where
        records = _write_shards(out, tasks, workers, progress, world)  # 3. the shards
    except HvdganError:  # (every rank is past its writes: the failure was agreed on)
        if created and world.rank == 0:
            _remove_new(out)
        raise
    return _write_manifest(out, source, bounds, compression, shuffle_seed, records, world)  # 4. the manifest


def _remove_new(out: Path) -> None:
    """A prepare that failed (an image it could not read, half-way) into a directory it made leaves nothing:
    the shards it wrote, and the directory when nothing else is in it."""
    for p in out.iterdir():
        if SHARD_RE.match(p.name):
            p.unlink(missing_ok=True)
    try:
        out.rmdir()
    except OSError:
        pass


def _claim(out: Path, overwrite: bool, world: World) -> None:
    """Every rank agrees that `out` may be written; rank 0 makes it and removes an old manifest."""
    error = None
    try:
        existing = _existing_dataset(out)
        if existing and not overwrite:
            error = (f"{out}: already holds a dataset ({', '.join(existing[:3])}{', ...' if len(existing) > 3 else ''}); "
                     "pass --overwrite to replace it, or choose another OUT")
    except HvdganError as exc:
        error = exc.message
    world.agree(error, "hvdgan.prepare")
    error = None
    if world.rank == 0:
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / MANIFEST).unlink(missing_ok=True)  # no manifest until the new shards are all there
        except OSError as exc:
            error = f"{out}: cannot create the dataset directory: {exc}"
    world.agree(error, "hvdgan.prepare")


def _tasks(out: Path, source, bounds, compression: str, shuffle_seed: int | None, workers: int,
           world: World) -> list[_ShardTask]:
    """This rank's shards: which source images go to each (identical on every rank: fixed seed, sorted)."""
    order = np.arange(source.count, dtype=np.int64)
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(source.count)
    c, h, w = source.channels, source.height, source.width
    tasks = []
    for i in range(world.rank, len(bounds), world.size):
        idx = np.sort(order[bounds[i][0]:bounds[i][1]])
        task = _ShardTask(out=str(out), index=i, shards=len(bounds), idx=idx, compression=compression,
                          chunk_rows=chunk_rows_for(c, h, w), shape=(c, h, w),
                          has_labels=source.label_names is not None)
        if getattr(source, "portable", False) and workers > 1:
            task.source = source
        elif workers > 1:
            task.images, task.labels = source.read(idx)
        else:
            task.source = source
        tasks.append(task)
    return tasks


def _write_shards(out: Path, tasks: list[_ShardTask], workers: int, progress: bool, world: World) -> dict:
    """Write this rank's shards (in `workers` processes); {shard index: its record}."""
    records, error = {}, None
    total_mine = sum(len(t.idx) for t in tasks)
    bar = progress_bar(total=total_mine * world.size if world.size > 1 else total_mine,
                       desc=f"prepare {out.name}", enabled=progress and world.rank == 0)
    try:
        if workers > 1 and len(tasks) > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(max_workers=min(workers, len(tasks)),
                                     mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(_write_shard, t): t for t in tasks}
                for fut in as_completed(futures):
                    t = futures[fut]
                    records[t.index] = fut.result()
                    bar.update(len(t.idx) * world.size)
        else:
            for t in tasks:
                records[t.index] = _write_shard(t, progress=lambda n: bar.update(n * world.size))
    except HvdganError as exc:
        error = exc.message
    except Exception as exc:  # report, but let every rank reach the collective below
        if not world.horovod:
            raise
        error = f"{out}: rank {world.rank} failed writing its shards: {type(exc).__name__}: {exc}"
    finally:
        bar.close()
    world.agree(error, "hvdgan.prepare")
    return records


def _write_manifest(out: Path, source, bounds, compression: str, shuffle_seed: int | None, records: dict,
                    world: World) -> Manifest | None:
    """Rank 0 writes the manifest once every shard exists, and removes the shards an overwrite replaced."""
    gathered = world.gather(records, "hvdgan.prepare")
    manifest, error = None, None
    if world.rank == 0:
        try:
            merged = {}
            for part in gathered:
                merged.update(part)
            recs = [ShardRecord(**merged[i]) for i in range(len(bounds))]
            c, h, w = source.channels, source.height, source.width
            manifest = Manifest(root=out, count=source.count, height=h, width=w, channels=c, dtype="uint8",
                                labels=source.label_names, shards=recs, compression=compression,
                                chunk_rows=chunk_rows_for(c, h, w), source=source.describe(), seed=shuffle_seed,
                                created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            tmp = out / f".{MANIFEST}.tmp"
            tmp.write_text(manifest.to_json())
            os.replace(tmp, out / MANIFEST)
            keep = {r.file for r in recs}
            for p in out.iterdir():  # shards of the dataset that --overwrite replaced
                if SHARD_RE.match(p.name) and p.name not in keep:
                    p.unlink()
        except Exception as exc:
            error = f"{out}: writing {MANIFEST} failed: {exc}"
    world.agree(error, "hvdgan.prepare")
    return manifest


def write_dataset(out_dir: str | os.PathLike, images: np.ndarray, labels: np.ndarray | None = None, shards: int = 4,
                  compression: str = "none", label_names: Sequence[str] | None = None, overwrite: bool = False,
                  *, per_shard: int | None = None, workers: int = 1, shuffle_seed: int | None = None,
                  progress: bool = False) -> Manifest:
    """Write uint8 images [N, C, H, W] (and optional integer labels) as a sharded dataset. The images keep
    their order (shard 0 holds the first ones) unless shuffle_seed is given. Single process (plus `workers`);
    it never joins a Horovod world. Refuses to replace an existing dataset unless overwrite=True."""
    source = ArraySource(images, labels, label_names)
    return write_source(out_dir, source, shards=None if per_shard is not None else shards, per_shard=per_shard,
                        compression=compression, overwrite=overwrite, workers=workers, shuffle_seed=shuffle_seed,
                        progress=progress, use_horovod=False)
