"""Inception features of N images, distributed the way training is: each rank generates (or reads) a
contiguous share of the N images, extracts their features on its own device, and Horovod's allgather puts
the shares back in order (rank 0's first), so that the features are those of one process extracting the
same N images. Image i always comes from the i-th noise vector of one seeded stream, whatever the number
of ranks.

Reference features of a dataset are computed once and cached beside it (DIR/eval-cache/), keyed by the
manifest's shard checksums, the feature network and the image count; a shard whose size or mtime
changed since then makes them recomputed.
"""


from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..data.check import progress_bar
from ..data.format import open_shard
from ..dist.world import World
from ..errors import HvdganError

log = logging.getLogger("hvdgan")
PROTOCOL = 1  # bump when the image -> feature pipeline changes (invalidates cached reference features)
CACHE_DIR = "eval-cache"


# --------------------------------------------------------------------------------------- the world
def share(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows [a, b) of n that rank `rank` of `size` handles (contiguous; sizes differ by at most one)."""
    return n * rank // size, n * (rank + 1) // size


def gather(world: World, local: torch.Tensor, name: str) -> torch.Tensor:
    """Every rank's rows, in rank order (hvd: allgather; shares may differ in length)."""
    if not world.horovod or world.size == 1:
        return local
    return world.hvd.allgather(local.contiguous(), name=name)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> 8-bit pixels, rounded as a saved PNG would be."""
    return ((images.detach().float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8).cpu()


class Expected:
    """One log line, 5 s into a long extraction, with the time the rest will take (the bar shows on a terminal
    only; on 2 CPU cores 10,000 images take minutes, and a batch job's log gets this line). Not after the
    first batch: TorchScript optimises the network on its first calls, which are not the pace of the rest."""

    def __init__(self, total: int, what: str, enabled: bool):
        self.total, self.what, self.enabled, self.done, self.t0 = total, what, enabled, 0, time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        elapsed = time.perf_counter() - self.t0
        if self.enabled and self.done < self.total and elapsed >= 5:
            self.enabled = False
            rate = self.done / elapsed
            left = (self.total - self.done) / rate
            if left >= 20:
                log.info("%s: about %d min %02d s more, at %.1f images/s", self.what, left // 60, left % 60, rate)


# -------------------------------------------------------------------------------- dataset features
def read_rows(m, a: int, b: int) -> torch.Tensor:
    """Images a..b-1 of a dataset in its global row order (shard by shard), as uint8 [b-a, C, H, W]."""
    out = np.empty((b - a, m.channels, m.height, m.width), dtype=np.uint8)
    offsets = m.offsets
    for i, rec in enumerate(m.shards):
        lo, hi = max(a, int(offsets[i])), min(b, int(offsets[i + 1]))
        if lo >= hi:
            continue
        path = m.shard_path(i)
        try:
            with open_shard(path) as f:  # HDF5_USE_FILE_LOCKING as every other open: mixed flags fail
                out[lo - a:hi - a] = f["images"][lo - offsets[i]:hi - offsets[i]]
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise HvdganError(f"{path}: cannot read images ({exc}); check it with `hvdgan data check {m.root}`") from None
    return torch.from_numpy(out)


def _stamps(m) -> list:
    return [[rec.file, *(lambda s: (s.st_size, s.st_mtime_ns))(m.shard_path(i).stat())]
            for i, rec in enumerate(m.shards)]


def cache_key(m, extractor_key: str, count: int) -> str:
    doc = {"protocol": PROTOCOL, "features": extractor_key, "count": count,
           "shape": [m.channels, m.height, m.width], "shards": [[s.file, s.count, s.sha256] for s in m.shards]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:24]


def _cache_paths(m, key: str) -> list[Path]:
    from .inception import cache_root

    name = f"features-{key}.npz"
    return [m.root / CACHE_DIR / name, cache_root() / CACHE_DIR / name]


def _load_cache(m, key: str) -> tuple[np.ndarray | None, Path | None]:
    stamps = _stamps(m)
    for path in _cache_paths(m, key):
        if not path.is_file():
            continue
        try:
            with np.load(path, allow_pickle=False) as z:
                if json.loads(str(z["stamps"])) == stamps:
                    return z["features"], path
                log.warning("%s: a shard of %s changed since these features were cached: recomputing", path, m.root)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("%s: unreadable (%s): recomputing", path, exc)
    return None, None


def _save_cache(m, key: str, features: np.ndarray) -> Path | None:
    for path in _cache_paths(m, key):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                np.savez(f, features=features, stamps=json.dumps(_stamps(m)))
            os.replace(tmp, path)
            return path
        except OSError as exc:  # a read-only dataset directory: the user's cache instead
            tmp.unlink(missing_ok=True)
            log.warning("cannot write %s (%s)", path, exc.strerror or exc)
    return None


def dataset_features(data, extractor, world: World = World(), limit: int | None = None, progress: bool = True,
                     use_cache: bool = True) -> np.ndarray | None:
    """Features of the first min(limit, count) images of dataset `data` (collective under Horovod);
    the array on rank 0, None on the other ranks."""
    from ..data import open_manifest

    rank, size = world.rank, world.size
    m = open_manifest(data)
    count = m.count if limit is None else min(limit, m.count)
    if count < 2:
        raise HvdganError(f"{data}: evaluation needs at least 2 images, the dataset has {m.count}")
    key = cache_key(m, extractor.key, count)
    feats, where = _load_cache(m, key) if (use_cache and rank == 0) else (None, None)
    cached = world.broadcast(feats is not None, "hvdgan.eval.cached")
    if cached:
        if rank == 0:
            log.info("reference features of %s: %s", data, where)
        return feats if rank == 0 else None
    a, b = share(count, rank, size)
    if rank == 0:  # (the bar below only shows on a terminal; this line also reaches a batch job's log)
        log.info("reference features of %s: extracting %d images on %d rank(s) (once: cached afterwards; "
                 "a few images/s per CPU core)", data, count, size)
    images = read_rows(m, a, b)
    what = f"features of {Path(data).name} (rank 0's {b - a} of {count})"
    bar, expected = progress_bar(b - a, what, progress and rank == 0), Expected(b - a, what, progress and rank == 0)
    local = []
    for i in range(0, len(images), extractor.batch_size):
        local.append(extractor(images[i:i + extractor.batch_size]))
        bar.update(len(local[-1]))
        expected.update(len(local[-1]))
    bar.close()
    local = torch.cat(local) if local else torch.empty(0, 2048)
    every = gather(world, local, "hvdgan.eval.real").numpy()
    if rank != 0:
        return None
    if use_cache:
        saved = _save_cache(m, key, every)
        log.info("reference features of %s (%d images) cached in %s", data, count, saved)
    return every


# ------------------------------------------------------------------------------ generated features
@torch.no_grad()
def generated_features(G: torch.nn.Module, n: int, extractor, world: World = World(), seed: int = 0,
                       batch_size: int = 64, progress: bool = True) -> np.ndarray | None:
    """Features of n images from G (eval mode) and the first n noise vectors of `seed`'s stream
    (collective under Horovod); the array on rank 0, None on the other ranks."""
    rank, size = world.rank, world.size
    device = next(G.parameters()).device
    z = torch.randn(n, G.nz, 1, 1, generator=torch.Generator().manual_seed(seed))
    classes = getattr(G, "num_classes", 0)  # a conditional G: the classes in turn, as many images of each
    y = torch.arange(n) % classes if classes else None
    a, b = share(n, rank, size)
    was_training = G.training
    G.eval()
    what = f"generated (rank 0's {b - a} of {n})"
    bar, expected = progress_bar(b - a, what, progress and rank == 0), Expected(b - a, what, progress and rank == 0)
    local = []
    try:
        for i in range(a, b, batch_size):
            j = min(i + batch_size, b)
            cond = () if y is None else (y[i:j].to(device),)
            local.append(extractor(to_uint8(G(z[i:j].to(device), *cond))))
            bar.update(j - i)
            expected.update(j - i)
    finally:
        G.train(was_training)
        bar.close()
    local = torch.cat(local) if local else torch.empty(0, 2048)
    every = gather(world, local, "hvdgan.eval.fake").numpy()
    return every if rank == 0 else None
