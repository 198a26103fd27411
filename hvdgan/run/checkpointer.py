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
from .runlog import read_records
from .state import RunState

log = logging.getLogger("hvdgan")
NON_FINITE_ADVICE = "Lower the learning rates, or try --loss hinge / --spectral-norm"


class Checkpointer:
    def __init__(self, out: Path, keep: int, world: World):
        self.out, self.directory, self.keep, self.world = Path(out), Path(out) / "checkpoints", keep, world
        self.last: Path | None = None  # rank 0's newest good checkpoint (named when a run stops on NaN)
        self.resumed_from: Path | None = None  # never removed by keep-last-K

    # ------------------------------------------------------------------------------------- restore
    def restore(self, resume: str, gan, state: RunState, arch: dict, batch_size: int, batches_per_epoch: int,
                snapshot: dict | None = None) -> bool:
        """Continue from the checkpoint that `resume` names (none, auto: the newest readable one, or a path),
        or from `snapshot`, a checkpoint's content held in memory by rank 0 (an elastic commit); False when the
        run starts fresh. Rank 0 loads and checks it; every rank gets rank 0's networks and optimizers
        (Horovod's broadcast) and its own random streams."""
        found = self.world.on_root(lambda: self._find(resume, arch, snapshot), "hvdgan.resume")
        meta = self.world.broadcast(found[0] if found else None, "hvdgan.resume.meta")
        if meta is None:
            return False
        if self.world.root:
            gan.load_state_dict(found[1])
        gan.broadcast()  # hvd: rank 0's loaded parameters and optimizer state to every rank
        gan.d_updates = meta["d_updates"]
        warnings = state.continue_from(meta, self.world.rank, self.world.size, batch_size, batches_per_epoch)
        self.last = self.resumed_from = Path(meta["path"]) if meta["path"] else None
        if self.world.root:
            for warning in warnings:
                log.warning(warning)
            log.info("resumed from %s at step %d (epoch %d, batch %d)", meta["path"] or "the last commit",
                     state.step, state.epoch, state.batch)
        return True

    def _find(self, resume: str, arch: dict, snapshot: dict | None) -> tuple[dict, dict] | None:
        """Rank 0: the checkpoint to continue from, loaded and checked, with the run's history made linear
        (None: start fresh)."""
        ckpt.remove_temporaries(self.directory)  # left by a write that a crash or a full disk interrupted
        if snapshot is not None:  # (its checkpoint file, when a survivor wrote one: hvdgan.run.elastic)
            file = ckpt.path_for(self.directory, snapshot["step"])
            path, saved = (file if file.exists() else None), snapshot
        elif resume == "auto":
            path, saved = ckpt.newest_readable(self.directory)
        elif resume in ("none", "", None):
            path, saved = None, None
        else:
            path = Path(resume)
            saved = ckpt.load(path)
        if saved is None:
            if resume in ("none", "", None) and (ckpt.list_checkpoints(self.directory) or trained(self.out)):
                raise HvdganError(f"{self.out}: holds an earlier run; continue it with --resume auto, or choose "
                                  "another --out (nothing was overwritten)")
            return None
        ckpt.check_architecture(path or "the last commit", saved["arch"], arch)
        history.abandon_after(self.out, saved["step"])  # later checkpoints, metrics, samples: moved aside
        meta = {k: saved[k] for k in ("step", "epoch", "batch", "d_updates", "rng", "world_size")}
        meta.update(path=str(path) if path else None, best_fid=saved.get("best_fid", float("inf")),
                    batch_size=saved["config"]["batch_size"],
                    batches_per_epoch=saved["config"].get("batches_per_epoch"))
        return meta, saved

    # ---------------------------------------------------------------------------------------- save
    def payload(self, gan, state: RunState, config: dict, arch: dict) -> dict:
        """A checkpoint's content, on every rank: the GAN's state (which references the live tensors), the
        position, every rank's random streams, and a check that nothing is non-finite (parameters and
        optimizer state are identical on every rank), so that all ranks stop together rather than write a
        checkpoint that could not be resumed."""
        payload = gan.state_dict()
        bad = ckpt.first_non_finite(payload)
        gathered = self.world.gather((state.rng_state(), bad), "hvdgan.rng")
        bad = next((b for _, b in gathered if b), None)
        if bad:
            raise HvdganError(f"step {state.step}: {bad} is NaN or infinite: no checkpoint written; last good "
                              f"checkpoint: {self.last}. {NON_FINITE_ADVICE}")
        payload.update(**state.position(), d_updates=gan.d_updates, rng=[rng for rng, _ in gathered], config=config,
                       arch=arch, world_size=self.world.size, best_fid=state.best_fid)
        return payload

    def save(self, gan, state: RunState, config: dict, arch: dict, best: bool = False) -> Path | None:
        """Collective: the payload, written by rank 0. `best`: ckpt-best.pt, outside keep-last-K."""
        payload = self.payload(gan, state, config, arch)
        if not self.world.root:
            return None
        if best:
            return ckpt.save_best(payload, self.directory)
        protect = [self.resumed_from] if self.resumed_from else []
        self.last = ckpt.save(payload, self.directory, state.step, self.keep, protect=protect)
        return self.last


def trained(out: Path) -> bool:
    """Whether OUT/metrics.jsonl records a step after 0: a start that failed before its first step logged
    step 0 at most, and is no earlier run to refuse to overwrite."""
    return any(isinstance(r, dict) and isinstance(r.get("step"), int) and r["step"] > 0
               for r in read_records(out / "metrics.jsonl", warn=False))
