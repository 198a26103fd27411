"""The rank-aware reader: `ShardedReader` deals shards to ranks each epoch and yields shuffled batches of one
rank's share, by one of three read paths (docs/data-format.md, "Reading"):

    memory     the rank's shards of the epoch read whole into one array, batches gathered from it
    mapped     uncompressed shards whose chunks lie in order in the file: batches gathered from read-only
               mappings of the files (no copy through HDF5)
    streamed   windows of whole chunks read through HDF5 (decompressing) into a buffer, batches gathered
               from it

The three yield the same batches: the order is planned first (`rows`), then read.
torch is imported when an epoch starts (the batches are torch tensors), not with this module.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Iterator

import numpy as np

from ..errors import HvdganError
from .deal import Deal
from .format import SHUFFLE_WINDOW, check_file_size, open_manifest
from .shardio import map_images, open_checked, read_rows_into


class ShardedReader:
    """Batches of one rank's share of a sharded dataset.

    The images a rank reads each epoch, and their order, are its share of the epoch's deal (hvdgan.data.deal):
    they depend only on (manifest, seed, epoch, rank, size, batch_size, shuffle_window), not on `in_memory`
    or `direct`.

    in_memory: hold the rank's shards of the epoch in memory (read whole, once per epoch; kept across epochs
    while the rank's shard set stays the same, e.g. always with one rank) when they fit in half the job's
    memory on the node (cgroup / Slurm limit, else RAM) split between its `local_size` ranks; otherwise stream
    from the files, one window at a time.
    direct: when streaming uncompressed shards whose chunks lie in order in the file (as `prepare` writes
    them), map the chunks (located through HDF5's chunk index) and gather batches straight from them, instead
    of copying windows through HDF5 first. Read-only mappings; a process maps its own.
    """

    def __init__(self, root, rank: int = 0, size: int = 1, batch_size: int = 64, seed: int = 0,
                 in_memory: bool = True, *, shuffle_window: int = SHUFFLE_WINDOW, verify: bool = False,
                 direct: bool = True, local_size: int = 1):
        self.manifest = m = open_manifest(root)
        for i in range(len(m.shards)):  # every shard there, whole: a missing one fails the start, not an epoch
            check_file_size(m, i)
        if size < 1 or not 0 <= rank < size:
            raise HvdganError(f"rank {rank} of size {size}: need 0 <= rank < size")
        if batch_size < 1:
            raise HvdganError(f"batch_size: must be >= 1, got {batch_size}")
        if seed < 0:
            raise HvdganError(f"seed: must be >= 0, got {seed}")
        self.rank, self.size, self.batch_size, self.seed = rank, size, batch_size, seed
        self.verify, self.direct = verify, direct
        self._counts = np.array([s.count for s in m.shards], dtype=np.int64)
        self._offsets = m.offsets
        self.deal = Deal(self._counts, self._offsets, m.chunk_rows, rank, size, batch_size, seed,
                         max(shuffle_window, batch_size))
        self.batches_per_epoch = self.deal.batches_per_epoch
        share = self.deal.min_rank_samples
        if self.batches_per_epoch < 1:
            raise HvdganError(f"{m.path}: {m.count} images on {size} rank(s) give each rank {share}, "
                              f"fewer than one batch of {batch_size}: lower the batch size or use fewer ranks")
        # a rank holds the shards its range touches: its share, plus the two shards it may share with neighbours
        most = (share + 2 * max(s.count for s in m.shards)) * m.bytes_per_image
        self.in_memory = bool(in_memory)
        from ..dist.resources import memory_budget  # (the job's memory on the node: cgroup, Slurm --mem or RAM)

        if in_memory and most > memory_budget(local_size):
            warnings.warn(f"{m.root}: a rank's shards ({most / 1e9:.1f} GB) do not fit in memory; streaming them")
            self.in_memory = False
        self._labels = np.full(m.count, -1, dtype=np.int64) if m.has_labels else None
        self._reset()

    # -- per-process state: h5py handles and mappings never travel over a fork or a pickle
    def _reset(self) -> None:
        self._pid = os.getpid()
        self._files: dict[int, Any] = {}
        self._dsets: dict[int, Any] = {}
        self._views: dict[int, np.ndarray | None] = {}
        self._mem_key: tuple | None = None
        self._mem: np.ndarray | None = None
        self._mem_delta: np.ndarray | None = None
        self._bufs: list[np.ndarray] = []

    def _check_process(self) -> None:
        if self._pid != os.getpid():
            # forked: the parent's handles stay referenced (never closed from here), this process opens its own
            self._orphans = getattr(self, "_orphans", []) + [self._files, self._dsets, self._views]
            self._reset()

    def __getstate__(self):
        state = {k: v for k, v in self.__dict__.items() if k not in ("_files", "_dsets", "_views", "_mem", "_bufs",
                                                                     "_orphans")}
        state.update(_pid=None, _mem_key=None, _mem_delta=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    def __len__(self) -> int:
        return self.batches_per_epoch

    def close(self) -> None:
        """Close this process's files and drop mappings and memory (they reopen on the next epoch)."""
        if getattr(self, "_pid", None) == os.getpid():
            for f in self._files.values():
                try:
                    f.close()
                except Exception:
                    pass
            self._reset()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- files
    def _file(self, i: int):
        self._check_process()
        f = self._files.get(i)
        if f is None:
            f, labels = open_checked(self.manifest, i, self.verify, self._labels is not None)
            if labels is not None:
                self._labels[self._offsets[i]:self._offsets[i + 1]] = labels
            self._files[i], self._dsets[i] = f, f["images"]
        return f

    def _read(self, i: int, a: int, b: int, out: np.ndarray) -> None:
        """Rows a..b-1 of shard i's images into `out` (C-contiguous), through HDF5 (decompressing if needed)."""
        self._file(i)
        read_rows_into(self._dsets[i], a, b, out, self.manifest.shard_path(i))

    def _view(self, i: int) -> np.ndarray | None:
        """Shard i's images mapped from the file (hvdgan.data.shardio.map_images), or None."""
        self._file(i)
        if i not in self._views:
            self._views[i] = map_images(self.manifest, i, self._dsets[i])
        return self._views[i]

    # -- the plan (hvdgan.data.deal)
    def pieces_of(self, epoch: int) -> list[tuple[int, int, int]]:
        return self.deal.pieces_of(epoch)

    def shards_of(self, epoch: int) -> np.ndarray:
        return self.deal.shards_of(epoch)

    def rows(self, epoch: int) -> np.ndarray:
        return self.deal.rows(epoch)

    # -- reading
    def _memory(self, shards) -> None:
        """Load the epoch's shards of this rank into one array (unless they are there already)."""
        key = tuple(sorted(int(s) for s in shards))
        self._check_process()
        if self._mem_key == key:
            return
        m = self.manifest
        self._mem = None
        mem = np.empty((int(self._counts[list(key)].sum()), m.channels, m.height, m.width), dtype=np.uint8)
        delta = np.zeros(len(self._counts), dtype=np.int64)
        p = 0
        for s in key:
            c = int(self._counts[s])
            self._read(s, 0, c, mem[p:p + c])
            delta[s] = p - self._offsets[s]
            p += c
        self._mem, self._mem_key, self._mem_delta = mem, key, delta
        self._keep_only(key)

    def _keep_only(self, shards) -> None:
        """Close the files (and drop the mappings) of shards this rank does not read this epoch."""
        keep = {int(s) for s in shards}
        for s in [s for s in self._files if s not in keep]:
            self._dsets.pop(s, None)
            self._views.pop(s, None)
            self._files.pop(s).close()

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[Any, Any]]:
        """Yield (images uint8 [B, C, H, W], labels int64 [B] or None) torch tensors: `batches_per_epoch` batches
        minus `start_batch` (skipped without reading anything for them)."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise HvdganError(f"start_batch: must be in 0..{self.batches_per_epoch}, got {start_batch}")
        windows, rows = self.deal.plan(epoch)
        if start_batch >= self.batches_per_epoch:
            return
        shards = self.shards_of(epoch)
        shard_of = np.searchsorted(self._offsets, rows, side="right") - 1  # [batches, B]
        if self.in_memory:
            yield from self._from_memory(shards, rows, shard_of, start_batch)
            return
        self._check_process()
        self._keep_only(shards)
        views = self._mapped(shards)
        if views is not None:
            yield from self._from_mappings(views, rows, shard_of, start_batch)
        else:
            yield from self._streamed(shards, windows, rows, shard_of, start_batch)

    def _batches(self, rows: np.ndarray):
        """new(b) -> (an empty uint8 batch, the labels of batch b or None) as torch tensors; the read paths fill
        the batch."""
        import torch

        m, labels = self.manifest, self._labels
        shape = (self.batch_size, m.channels, m.height, m.width)

        def new(b: int):
            return (torch.empty(shape, dtype=torch.uint8),
                    torch.from_numpy(labels[rows[b]]) if labels is not None else None)

        return new

    # -- path 1: memory
    def _from_memory(self, shards, rows, shard_of, start_batch: int):
        """Batches gathered from the rank's shards held in memory (loaded whole, unless they are there already)."""
        self._memory(shards)
        mem, pos = self._mem, rows + self._mem_delta[shard_of]
        batch = self._batches(rows)
        for b in range(start_batch, self.batches_per_epoch):
            images, labels = batch(b)
            mem.take(pos[b], 0, images.numpy(), "clip")
            yield images, labels

    # -- path 2: mapped
    def _mapped(self, shards) -> dict[int, np.ndarray] | None:
        """Read-only mappings of the shards' images, when `direct` and every shard can be mapped; else None."""
        if not self.direct or self.manifest.compression != "none":
            return None
        views = {int(s): self._view(int(s)) for s in shards}
        return views if views and all(v is not None for v in views.values()) else None

    def _from_mappings(self, views, rows, shard_of, start_batch: int):
        """Batches gathered straight from the mapped files: the images of one shard within a batch form runs
        (batches are in storage order), one gather per run."""
        nb, B = self.batches_per_epoch, self.batch_size
        flat_s, flat_l = shard_of.reshape(-1), (rows - self._offsets[shard_of]).reshape(-1)
        change = np.ones(rows.shape, dtype=bool)
        change[:, 1:] = shard_of[:, 1:] != shard_of[:, :-1]
        change[:start_batch] = False
        starts = np.flatnonzero(change.reshape(-1)).tolist() + [nb * B]
        runs: list[list] = [[] for _ in range(nb)]
        for lo, hi in zip(starts[:-1], starts[1:]):
            b = lo // B
            runs[b].append((views[int(flat_s[lo])], flat_l[lo:hi], lo - b * B, hi - b * B))
        batch = self._batches(rows)
        for b in range(start_batch, nb):
            images, labels = batch(b)
            out = images.numpy()
            for view, idx, lo, hi in runs[b]:
                view.take(idx, 0, out[lo:hi], "clip")
            yield images, labels

    # -- path 3: streamed
    def _streamed(self, shards, windows, rows, shard_of, start_batch: int):
        """Batches gathered from windows read whole through HDF5 into alternating halves of a buffer."""
        m, B = self.manifest, self.batch_size
        ends = np.cumsum([len(perm) for _, perm in windows])
        cap = int(max(len(perm) for _, perm in windows))
        buf = self._bufs.pop() if self._bufs and len(self._bufs[-1]) >= 2 * cap else \
            np.empty((2 * cap, m.channels, m.height, m.width), dtype=np.uint8)
        # position in buf of each of the rank's images, indexed by the image's place among the rank's shards
        base = np.zeros(len(self._counts), dtype=np.int64)
        base[shards] = np.concatenate([[0], np.cumsum(self._counts[shards])[:-1]]) - self._offsets[shards]
        where = np.full(int(self._counts[shards].sum()), -1, dtype=np.int64)
        at = rows + base[shard_of]
        loaded, batch = -1, self._batches(rows)
        try:
            for b in range(start_batch, self.batches_per_epoch):
                last = int(np.searchsorted(ends, (b + 1) * B - 1, side="right"))
                first = int(np.searchsorted(ends, b * B, side="right"))
                for w in range(max(loaded + 1, first), last + 1):
                    blocks, perm = windows[w]
                    p = (w % 2) * cap
                    for s, a, e in blocks:
                        self._read(s, a, e, buf[p:p + e - a])
                        where[self._offsets[s] + base[s] + a:self._offsets[s] + base[s] + e] = np.arange(p, p + e - a)
                        p += e - a
                    loaded = w
                images, labels = batch(b)
                buf.take(where[at[b]], 0, images.numpy(), "clip")
                yield images, labels
        finally:
            self._bufs.append(buf)
