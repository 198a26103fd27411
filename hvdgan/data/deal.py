"""The deal of a sharded dataset among ranks, epoch by epoch: which images a rank reads, in which order
(docs/data-format.md, "Reading"). Arithmetic on the shard sizes and the seed only: it reads nothing, and
every rank computes every rank's share alike.

Every epoch the shard list is shuffled with (seed, epoch), the same on every rank, and its images, in that
shard order, are dealt out in `size` contiguous ranges of floor(N / size) images: rank r reads range r, a
few whole shards plus at most two pieces of the shards at its range's ends. Within its range a rank reads
contiguous blocks (at most one chunk each), shuffles the blocks, and shuffles the images within windows of
`shuffle_window` images; the images of one batch are then put in storage order (a batch is a set; this
makes its reads runs of rows). Every rank yields `batches_per_epoch` = floor(floor(N / size) / batch_size)
batches, whatever the shard sizes: an epoch is one pass over the data, less fewer than size x batch_size
images (the rest of the deal and the last partial batch of each rank; other images every epoch). The
order depends only on (shard sizes, seed, epoch, rank, size, batch_size, shuffle_window).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import HvdganError


@dataclass(frozen=True)
class Deal:
    counts: np.ndarray  # images per shard, in the manifest's order
    offsets: np.ndarray  # global row of each shard's first image (and the total at the end)
    chunk_rows: int
    rank: int
    size: int
    batch_size: int
    seed: int
    shuffle_window: int  # >= batch_size: a batch spans at most two windows

    @property
    def min_rank_samples(self) -> int:
        """Every rank's share of an epoch (images are dealt, not shards)."""
        return int(self.counts.sum()) // self.size

    @property
    def batches_per_epoch(self) -> int:
        return self.min_rank_samples // self.batch_size

    @property
    def samples_per_epoch(self) -> int:
        return self.batches_per_epoch * self.batch_size

    def pieces_of(self, epoch: int) -> list[tuple[int, int, int]]:
        """This rank's range of `epoch`'s deal as (shard, start, stop) pieces, in the epoch's shard order."""
        if epoch < 0:
            raise HvdganError(f"epoch: must be >= 0, got {epoch}")
        order = np.random.default_rng([self.seed, epoch, 0]).permutation(len(self.counts))
        lo, hi = self.rank * self.min_rank_samples, (self.rank + 1) * self.min_rank_samples
        pieces, pos = [], 0
        for s in order:
            c = int(self.counts[s])
            a, b = max(lo, pos), min(hi, pos + c)
            if a < b:
                pieces.append((int(s), a - pos, b - pos))
            pos += c
        return pieces

    def shards_of(self, epoch: int) -> np.ndarray:
        """The shards this rank reads (a part of) in `epoch`."""
        return np.array([s for s, _, _ in self.pieces_of(epoch)], dtype=np.int64)

    def windows(self, epoch: int):
        """[(blocks [(shard, start, stop)], permutation of the window's images)], covering this epoch's batches."""
        blk = self.chunk_rows
        blocks = [(s, a, min((a // blk + 1) * blk, b)) for s, lo, b in self.pieces_of(epoch)
                  for a in [lo, *range((lo // blk + 1) * blk, b, blk)]]
        rng = np.random.default_rng([self.seed, epoch, 1, self.rank, self.size])
        blocks = [blocks[j] for j in rng.permutation(len(blocks))]
        need = self.samples_per_epoch
        windows, cur, n, total = [], [], 0, 0
        for blk_ in blocks:
            cur.append(blk_)
            n += blk_[2] - blk_[1]
            if n >= self.shuffle_window:
                windows.append((cur, rng.permutation(n)))
                total += n
                cur, n = [], 0
                if total >= need:
                    break
        if cur and total < need:
            windows.append((cur, rng.permutation(n)))
        return windows

    def global_rows(self, blocks) -> np.ndarray:
        return np.concatenate([self.offsets[s] + np.arange(a, b) for s, a, b in blocks])

    def plan(self, epoch: int):
        """(windows, rows): rows holds the global row of every image yielded this epoch, batch after batch,
        each batch in storage order."""
        windows = self.windows(epoch)
        rows = np.concatenate([self.global_rows(blocks)[perm] for blocks, perm in windows])
        rows = rows[: self.samples_per_epoch].reshape(self.batches_per_epoch, self.batch_size)
        rows.sort(axis=1)
        return windows, rows

    def rows(self, epoch: int) -> np.ndarray:
        """Global row numbers (shard by shard, as in the manifest) of the images this rank yields in `epoch`, in
        order; batch b is rows[b*batch_size:(b+1)*batch_size]. Reads nothing."""
        return self.plan(epoch)[1].reshape(-1)
