"""Evaluation of a generator or a dataset with Inception features: FID, KID, precision/recall.

Distributed the way training is: each rank generates (or reads) a contiguous share of the N images,
extracts their features on its own device, and Horovod's allgather puts the shares back in order
(rank 0's first), so that the features, and hence the numbers, are those of one process evaluating
the same N images. Image i always comes from the i-th noise vector of one seeded stream, whatever the
number of ranks. Rank 0 computes the scores and broadcasts them.

Reference features of a dataset are computed once and cached beside it (DIR/eval-cache/), keyed by the
manifest's shard checksums, the feature network and the image count; a shard whose size or mtime
changed since then makes them recomputed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..data.check import progress_bar
from ..dist import layout
from ..dist.world import World
from ..errors import HvdganError
from . import scores

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


# -------------------------------------------------------------------------------- dataset features
def read_rows(m, a: int, b: int) -> torch.Tensor:
    """Images a..b-1 of a dataset in its global row order (shard by shard), as uint8 [b-a, C, H, W]."""
    import h5py

    out = np.empty((b - a, m.channels, m.height, m.width), dtype=np.uint8)
    offsets = m.offsets
    for i, rec in enumerate(m.shards):
        lo, hi = max(a, int(offsets[i])), min(b, int(offsets[i + 1]))
        if lo >= hi:
            continue
        path = m.shard_path(i)
        try:
            with h5py.File(path, "r", locking=False) as f:
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
    bar = progress_bar(b - a, f"features of {Path(data).name} (rank 0's {b - a} of {count})",
                       progress and rank == 0)
    local = []
    for i in range(0, len(images), extractor.batch_size):
        local.append(extractor(images[i:i + extractor.batch_size]))
        bar.update(len(local[-1]))
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
def generated_features(G: torch.nn.Module, n: int, extractor, world: World = World(), seed: int = 0, batch_size: int = 64,
                       progress: bool = True) -> np.ndarray | None:
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
    bar = progress_bar(b - a, f"generated (rank 0's {b - a} of {n})", progress and rank == 0)
    local = []
    try:
        for i in range(a, b, batch_size):
            j = min(i + batch_size, b)
            cond = () if y is None else (y[i:j].to(device),)
            local.append(extractor(to_uint8(G(z[i:j].to(device), *cond))))
            bar.update(j - i)
    finally:
        G.train(was_training)
        bar.close()
    local = torch.cat(local) if local else torch.empty(0, 2048)
    every = gather(world, local, "hvdgan.eval.fake").numpy()
    return every if rank == 0 else None


def scores_of(real: np.ndarray | None, fake: np.ndarray | None, metrics, world: World = World(), real_stats=None,
              seed: int = 0) -> dict:
    """Rank 0 computes the metrics; every rank gets them."""
    def compute():
        try:
            return scores.compute(real, fake, metrics, real_stats=real_stats, seed=seed)
        except ValueError as exc:  # (too few images for a metric's k or subsets)
            raise HvdganError(str(exc)) from None

    return world.on_root(compute, "hvdgan.eval.scores", share=True)


# ------------------------------------------------------------------------------------ in training
class Evaluator:
    """FID (and KID, precision/recall) of the generator during training: reference features once at
    start, then `evaluate(model)` at every --eval-every step (a collective: call it on every rank)."""

    def __init__(self, data, num: int, metrics=("fid",), extractor=None, world: World = World(),
                 real_num: int | None = None, seed: int = 0, batch_size: int = 64):
        self.num, self.metrics, self.world, self.seed, self.batch_size = num, tuple(metrics), world, seed, batch_size
        self.extractor = extractor
        self.real = dataset_features(data, extractor, world, limit=real_num)
        self.real_stats = scores.gaussian(self.real) if self.real is not None and "fid" in self.metrics else None
        self._copy = None

    def generator(self, gan) -> torch.nn.Module:
        """The generator to evaluate, the same on every rank: rank 0's EMA of G (only rank 0 keeps the EMA,
        which it alone updates), broadcast into a copy of G on the others. One broadcast of |G| values per
        evaluation instead of an EMA update on every rank at every step."""
        model = gan.sample_model()
        if not self.world.horovod or self.world.size == 1:
            return model
        if not self.world.root:
            if self._copy is None:
                self._copy = copy.deepcopy(gan.G)
            model = self._copy
        state = model.state_dict()
        layout.broadcast_parameters(self.world.hvd, {f"hvdgan.eval.G.{k}": v for k, v in state.items()}, root_rank=0)  # hvd
        return model

    def evaluate(self, gan) -> dict:
        t0 = time.perf_counter()
        fake = generated_features(self.generator(gan), self.num, self.extractor, self.world, self.seed,
                                  self.batch_size, progress=False)
        result = scores_of(self.real, fake, self.metrics, self.world, self.real_stats, self.seed)
        result["eval_seconds"] = time.perf_counter() - t0
        return result


# ----------------------------------------------------------------------------------- hvdgan evaluate
def find_checkpoint(target) -> Path:
    """A checkpoint file, or a run directory (its newest checkpoint)."""
    from ..run import checkpoint as ckpt

    target = Path(target)
    if target.is_dir():
        for d in (target / "checkpoints", target):
            found = ckpt.list_checkpoints(d)
            if found:
                return found[-1]
        raise HvdganError(f"{target}: no ckpt-*.pt in {target / 'checkpoints'} or {target}")
    if not target.is_file():
        raise HvdganError(f"{target}: no such checkpoint file or run directory")
    return target


def run(target=None, real=(), data=None, num: int = 10_000, real_num: int | None = None, metrics=("fid",),
        inception=None, batch_size: int = 32, seed: int = 0, ema: bool = True, device: str = "auto",
        progress: bool = True, use_cache: bool = True) -> dict | None:
    """`hvdgan evaluate`: a checkpoint against its dataset, or two datasets against each other. Under a
    launcher every rank takes part; the result on rank 0 (None on the others)."""
    from ..models.placement import default_device

    if bool(target) == (len(real) == 2) or len(real) not in (0, 2) or (real and data):
        raise HvdganError("give a CHECKPOINT_OR_RUN_DIR (with an optional --data DIR), or --real DIR_A --real DIR_B")
    world = World.from_horovod(threads=False)
    if "OMP_NUM_THREADS" not in os.environ:  # the node's cores shared among its ranks, as hvdgan train does
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world.local_size))
    dev = default_device(device, world.local_rank)
    t0 = time.perf_counter()
    extractor = load_extractor(inception, dev, world, batch_size)
    result = {"metrics": None, "features": extractor.describe(), "world_size": world.size}
    if real:
        a = dataset_features(real[0], extractor, world, real_num, progress, use_cache)
        b = dataset_features(real[1], extractor, world, real_num, progress, use_cache)
        result.update(real=str(real[0]), fake=str(real[1]))
        if world.root:
            result.update(real_count=len(a), fake_count=len(b))
    else:
        from ..sample import load_generator

        path = find_checkpoint(target)
        state_data = data
        if state_data is None:
            from ..run import checkpoint as ckpt

            state_data = (ckpt.load(path).get("config") or {}).get("data")
            if not state_data:
                raise HvdganError(f"{path}: names no dataset; give --data DIR")
        G = load_generator(path, ema).to(dev)
        a = dataset_features(state_data, extractor, world, real_num, progress, use_cache)
        b = generated_features(G, num, extractor, world, seed, batch_size, progress)
        result.update(checkpoint=str(path), real=str(state_data), num=num, seed=seed, ema=ema)
        if world.root:
            result["real_count"] = len(a)
    result["metrics"] = scores_of(a, b, metrics, world, seed=seed)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result if world.root else None


def load_extractor(inception, device, world: World = World(), batch_size: int = 32):
    """The Inception network on every rank; all ranks agree that they could load it before any
    collective (one rank without the file must not leave the others waiting)."""
    from .inception import InceptionFeatures

    error, extractor = None, None
    try:
        extractor = InceptionFeatures(inception, device, batch_size)
    except HvdganError as exc:
        error = exc.message
    world.agree(error, "hvdgan.eval.load")
    return extractor


def for_training(cfg, world: World, device) -> Evaluator:
    """The Evaluator of `hvdgan train --eval-every` (cfg: hvdgan.config.Resolved)."""
    ev = cfg.evaluation
    return Evaluator(cfg.dataset.data, ev.eval_num, cfg.eval_metrics, load_extractor(ev.inception, device, world),
                     world, ev.eval_real_num, seed=cfg.schedule.seed)
