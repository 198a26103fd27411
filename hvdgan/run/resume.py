"""Where a resumed run continues: the data position in the epoch across world and batch sizes, and the
random-number streams of every rank (the trainer's resume and checkpoints use these)."""

from __future__ import annotations

import torch


def rng_state(gen: torch.Generator) -> dict:
    state = {"noise": gen.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(gen: torch.Generator, state: dict) -> None:
    gen.set_state(state["noise"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


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
