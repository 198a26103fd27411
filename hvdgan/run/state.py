"""Where a run stands between two steps: the `RunState`, the part of a run besides the networks and their
optimizers (hvdgan.gan.GAN.state_dict) that a resume needs to continue exactly.

A checkpoint stores it at the top level (step, epoch, batch, best_fid, every rank's random streams), as
hvdgan has always written it, so that the checkpoints of earlier versions resume. Resuming on another
world or batch size remaps the position in the epoch (`resume_batch`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class RunState:
    step: int = 0  # generator steps done
    epoch: int = 0
    batch: int = 0  # batches of this rank's share of the epoch consumed (one per D update)
    best_fid: float = math.inf  # of the --eval-every evaluations (ckpt-best.pt)
    noise: torch.Generator = field(default_factory=torch.Generator)  # this rank's noise and DiffAugment draws

    def position(self) -> dict:
        """The state every rank shares, for a checkpoint (the random streams are per rank: `rng_state`)."""
        return {"step": self.step, "epoch": self.epoch, "batch": self.batch}

    def rng_state(self) -> dict:
        """This rank's random streams: its noise generator, torch's global one and CUDA's."""
        state = {"noise": self.noise.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def set_rng_state(self, state: dict) -> None:
        self.noise.set_state(state["noise"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])

    def continue_from(self, meta: dict, rank: int, size: int, batch_size: int,
                      batches_per_epoch: int) -> list[str]:
        """Take a checkpoint's state (`meta`: its top-level values, the batch size and batches per epoch it
        was written with); returns warnings where the run cannot continue exactly where it left off."""
        self.step, self.epoch, self.best_fid = meta["step"], meta["epoch"], meta.get("best_fid", math.inf)
        self.batch, moved = resume_batch(meta, size, batch_size, batches_per_epoch)
        warnings = [moved] if moved else []
        if meta["world_size"] == size:
            self.set_rng_state(meta["rng"][rank])
        else:  # (a stream per rank of the new world; the step keeps them from repeating the first steps' draws)
            self.noise.manual_seed(self.noise.initial_seed() + 1_000_003 * self.step)
            warnings.append(f"resuming a {meta['world_size']}-rank run on {size} ranks: new noise streams, from "
                            f"the seed and step {self.step}")
        return warnings


def resume_batch(meta: dict, size: int, batch_size: int, batches_per_epoch: int) -> tuple[int, str | None]:
    """Where in its epoch a resumed run continues, in batches of the new size, and a warning when that is
    not exactly where the checkpoint left off. Ranks read contiguous ranges of the epoch's deal, and a rank's
    order within its range does not depend on the batch size (below the 4,096-image shuffle window), so:
    - the same world: the first `batch x old batch size` images of every rank's range are done; the new batch
      size continues exactly when it divides that, else just past it;
    - another world size: the ranges change; the run continues at the same fraction of its epoch."""
    batch, old_size, old_b = meta["batch"], meta["world_size"], meta.get("batch_size") or batch_size
    if old_size == size:
        done = batch * old_b
        new = min(-(-done // batch_size), batches_per_epoch)
        if done == new * batch_size:
            return new, None
        return new, (f"resuming batch size {old_b} as {batch_size}: {done} images of each rank's share of epoch "
                     f"{meta['epoch']} were done; continuing at image {new * batch_size} (batch {new})")
    old_bpe = meta.get("batches_per_epoch") or batches_per_epoch
    new = min(round(batch / max(old_bpe, 1) * batches_per_epoch), batches_per_epoch)
    return new, (f"resuming a {old_size}-rank run on {size} ranks: the epoch's deal changes with the world size; "
                 f"epoch {meta['epoch']} continues at the same fraction ({batch}/{old_bpe} -> {new}/{batches_per_epoch} "
                 "batches), so some images of this epoch may be seen twice or not at all")
