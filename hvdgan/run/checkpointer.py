"""A run's checkpoints, as the loop uses them: `restore` continues from one, `save` writes one. Both are
collectives (every rank calls them); rank 0 alone touches the files (hvdgan.run.checkpoint), which may
be on a file system that every rank shares. The Checkpointer owns the run's history (what lies beyond a
resumed step is moved aside: hvdgan.run.history) and keep-last-K.

A checkpoint file holds the GAN's state (G, D, G's EMA, both optimizers), the RunState (step, epoch,
batch, best FID, every rank's random streams), D's update count, the configuration, the architectures
and the world size it was written on.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..dist.world import World
from ..errors import HvdganError
from . import checkpoint as ckpt
from . import history
from .state import RunState

log = logging.getLogger("hvdgan")
NON_FINITE_ADVICE = "Lower the learning rates, or try --loss hinge / --spectral-norm"


class Checkpointer:
    def __init__(self, out: Path, keep: int, world: World):
        self.out, self.directory, self.keep, self.world = Path(out), Path(out) / "checkpoints", keep, world
        self.last: Path | None = None  # rank 0's newest good checkpoint (named when a run stops on NaN)
        self.resumed_from: Path | None = None  # never removed by keep-last-K

    # ------------------------------------------------------------------------------------- restore
    def restore(self, resume: str, gan, state: RunState, arch: dict, batch_size: int, batches_per_epoch: int) -> bool:
        """Continue from the checkpoint that `resume` names (none, auto: the newest readable one, or a path);
        False when the run starts fresh. Rank 0 loads and checks it; every rank gets rank 0's networks and
        optimizers (Horovod's broadcast) and its own random streams."""
        found = self.world.on_root(lambda: self._find(resume, arch), "hvdgan.resume")
        meta = self.world.broadcast(found[0] if found else None, "hvdgan.resume.meta")
        if meta is None:
            return False
        if self.world.root:
            gan.load_state_dict(found[1])
        gan.broadcast()  # hvd: rank 0's loaded parameters and optimizer state to every rank
        gan.d_updates = meta["d_updates"]
        warnings = state.continue_from(meta, self.world.rank, self.world.size, batch_size, batches_per_epoch)
        self.last = self.resumed_from = Path(meta["path"])
        if self.world.root:
            for warning in warnings:
                log.warning(warning)
            log.info("resumed from %s at step %d (epoch %d, batch %d)", meta["path"], state.step, state.epoch,
                     state.batch)
        return True

    def _find(self, resume: str, arch: dict) -> tuple[dict, dict] | None:
        """Rank 0: the checkpoint to continue from, loaded and checked, with the run's history made linear
        (None: start fresh)."""
        ckpt.remove_temporaries(self.directory)  # left by a write that a crash or a full disk interrupted
        if resume == "auto":
            path, saved = ckpt.newest_readable(self.directory)
        elif resume in ("none", "", None):
            path, saved = None, None
        else:
            path = Path(resume)
            saved = ckpt.load(path)
        if path is None:
            if resume in ("none", "", None) and (ckpt.list_checkpoints(self.directory)
                                                 or (self.out / "metrics.jsonl").exists()):
                raise HvdganError(f"{self.out}: holds an earlier run; continue it with --resume auto, or choose "
                                  "another --out (nothing was overwritten)")
            return None
        ckpt.check_architecture(path, saved["arch"], arch)
        history.abandon_after(self.out, saved["step"])  # later checkpoints, metrics, samples: moved aside
        meta = {k: saved[k] for k in ("step", "epoch", "batch", "d_updates", "rng", "world_size")}
        meta.update(path=str(path), best_fid=saved.get("best_fid", float("inf")),
                    batch_size=saved["config"]["batch_size"],
                    batches_per_epoch=saved["config"].get("batches_per_epoch"))
        return meta, saved

    # ---------------------------------------------------------------------------------------- save
    def save(self, gan, state: RunState, config: dict, arch: dict, best: bool = False) -> Path | None:
        """Every rank's random streams, and a check that nothing is non-finite (parameters and optimizer state
        are identical on every rank; rank 0 also checks G's EMA), so that all ranks stop together rather than
        write a checkpoint that could not be resumed. `best`: ckpt-best.pt, outside keep-last-K."""
        payload = gan.state_dict()  # (G's EMA lives on rank 0 only)
        bad = ckpt.first_non_finite(payload)
        gathered = self.world.gather((state.rng_state(), bad), "hvdgan.rng")
        bad = next((b for _, b in gathered if b), None)
        if bad:
            raise HvdganError(f"step {state.step}: {bad} is NaN or infinite: no checkpoint written; last good "
                              f"checkpoint: {self.last}. {NON_FINITE_ADVICE}")
        if not self.world.root:
            return None
        payload.update(**state.position(), d_updates=gan.d_updates, rng=[rng for rng, _ in gathered], config=config,
                       arch=arch, world_size=self.world.size, best_fid=state.best_fid)
        if best:
            return ckpt.save_best(payload, self.directory)
        protect = [self.resumed_from] if self.resumed_from else []
        self.last = ckpt.save(payload, self.directory, state.step, self.keep, protect=protect)
        return self.last
