"""Evaluation of a generator or a dataset with Inception features: FID, KID, precision/recall, for
`hvdgan evaluate` and for `hvdgan train --eval-every`. The features come from hvdgan.eval.features
(distributed, reference features cached); rank 0 computes the scores and every rank gets them.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..dist import layout
from ..dist.world import World
from ..errors import HvdganError
from . import scores
from .features import dataset_features, generated_features

log = logging.getLogger("hvdgan")


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


def run(target=None, real=(), data=None, num: int = 10_000, real_num: int | None = None, metrics=("fid", "pr"),
        inception=None, batch_size: int = 32, seed: int = 0, ema: bool = True, device: str = "auto",
        progress: bool = True, use_cache: bool = True, out=None, split: str = "auto") -> dict | None:
    """`hvdgan evaluate`: a checkpoint against its dataset, or two datasets against each other. Under a
    launcher every rank takes part; the result on rank 0 (None on the others), also written to `out`."""
    from ..logs import setup_logging
    from ..models.placement import default_device

    if bool(target) == (len(real) == 2) or len(real) not in (0, 2) or (real and data):
        raise HvdganError("give a CHECKPOINT_OR_RUN_DIR (with an optional --data DIR), or --real DIR_A --real DIR_B")
    # what the user named is checked before the slow part (Horovod, Inception's weights, the features)
    path = None if real else find_checkpoint(target)
    references, which = (list(real), None) if real else split_of(data or reference_of(path), split)
    for reference in references:
        check_real_num(reference, real_num, "--real-num")
    check_out(out)
    setup_logging()
    world = World.from_horovod(threads=False)
    if "OMP_NUM_THREADS" not in os.environ:  # the node's cores shared among its ranks, as hvdgan train does
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world.local_size))
    dev = default_device(device, world.local_rank)
    t0 = time.perf_counter()
    extractor = load_extractor(inception, dev, world, batch_size)
    if which and world.root:
        log.info("reference: %s, the %s split", references[0], which)
    result = {"metrics": None, "features": extractor.describe(), "world_size": world.size}
    if real:
        a = dataset_features(real[0], extractor, world, real_num, progress, use_cache)
        b = dataset_features(real[1], extractor, world, real_num, progress, use_cache)
        result.update(real=str(real[0]), fake=str(real[1]))
        if world.root:
            result.update(real_count=len(a), fake_count=len(b))
    else:
        from ..sample import load_generator

        state_data = references[0]
        G = load_generator(path, ema).to(dev)
        a = dataset_features(state_data, extractor, world, real_num, progress, use_cache)
        b = generated_features(G, num, extractor, world, seed, batch_size, progress)
        result.update(checkpoint=str(path), real=str(state_data), split=which, num=num, seed=seed, ema=ema)
        if world.root:
            result["real_count"] = len(a)
    result["metrics"] = scores_of(a, b, metrics, world, seed=seed)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    if out and world.root:
        try:
            Path(out).write_text(json.dumps(result, indent=2) + "\n")
        except OSError as exc:
            raise HvdganError(f"--out {out}: cannot write the result ({exc.strerror or exc})") from None
    return result if world.root else None


def reference_of(path: Path) -> str:
    """The dataset a checkpoint was trained on (its configuration's `data`)."""
    from ..run import checkpoint as ckpt

    data = (ckpt.load(path).get("config") or {}).get("data")
    if not data:
        raise HvdganError(f"{path}: names no dataset; give --data DIR")
    return data


def split_of(data, split: str = "auto") -> tuple[list[str], str]:
    """([the reference dataset], which split it is): DATA's held-out split (`hvdgan prepare --holdout`) unless
    `split` is "train" or there is none (scored against its own training images, a G that memorised a few of
    them looks good)."""
    from ..data import HOLDOUT, MANIFEST

    held = Path(data) / HOLDOUT
    if Path(data).name == HOLDOUT and (Path(data).parent / MANIFEST).is_file():
        return [str(data)], "held-out"  # --data DIR/holdout names the held-out split itself
    if split == "holdout" and not (held / MANIFEST).is_file():
        raise HvdganError(f"--split holdout: {data} has no held-out split; make one with `hvdgan prepare SOURCE "
                          f"{data} --holdout N --overwrite`")
    if split != "train" and (held / MANIFEST).is_file():
        return [str(held)], "held-out"
    return [str(data)], "training"


def check_real_num(data, real_num: int | None, option: str) -> None:
    """The reference images asked for are in the dataset (else the scores would silently use fewer)."""
    from ..data import open_manifest

    m = open_manifest(data)
    if real_num is not None and real_num > m.count:
        raise HvdganError(f"{option} {real_num}: {data} holds {m.count:,} images; ask for {m.count:,} or fewer "
                          f"(or leave {option} out: all of them)")


def check_out(out) -> None:
    """--out can be written, before an evaluation of minutes (Click checks that it is not a directory)."""
    if out is None:
        return
    parent = Path(out).parent
    if not parent.is_dir():
        raise HvdganError(f"--out {out}: no directory {parent} to write it in")
    if not os.access(parent, os.W_OK):
        raise HvdganError(f"--out {out}: {parent} is not writable")


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
    [reference], which = split_of(cfg.dataset.data)
    check_real_num(reference, ev.eval_real_num, "--eval-real-num")
    extractor = load_extractor(ev.inception, device, world)
    if world.root:
        log.info("--eval-every %d: against %s, the %s split", ev.eval_every, reference, which)
    return Evaluator(reference, ev.eval_num, cfg.eval_metrics, extractor, world, ev.eval_real_num,
                     seed=cfg.schedule.seed)
