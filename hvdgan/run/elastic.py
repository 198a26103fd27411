"""`hvdgan train --elastic`: the run goes on when ranks are lost, and takes ranks back when they return
(Horovod elastic, over Gloo; started by `hvdgan launch --elastic`, docs/elastic.md).

Horovod's `hvd.elastic.run` calls the training function again after every change of the world: a rank
lost (the survivors' collective fails with HorovodInternalError) or hosts added or removed (the next
commit raises HostsUpdatedInterrupt on every rank at the same step). Each call here builds a new
`Trainer` for the world as it now is: the deal of the images at the epoch's current position, the
learning rates scaled to the new world and the threads shared anew are made by the code that makes them
for any start, so the "reset callbacks" of Horovod's examples are the Trainer's own construction. The
networks, optimizers, G's EMA and the RunState continue from the newest commit that any rank holds,
through the path a checkpoint's resume takes (rank 0 loads it and Horovod broadcasts it).

A commit (`Commit.keep`) is a checkpoint's content copied to host memory on every rank: every
--commit-every steps, at every checkpoint and when a world begins; then Horovod's check for host
changes (a collective). A lost rank costs the steps since the last commit.

Horovod's own state objects are bypassed (hvd#3494): `Commit.sync` and `restore` do nothing, and every
collective of a reset happens inside the training function, in the same order on old and new ranks.

When the world shrinks, each node's first surviving rank writes the last commit as a checkpoint and
result.json says "preempted" before Horovod re-forms the world: if the driver gives up (fewer than
--min-np ranks within HOROVOD_ELASTIC_TIMEOUT, or no host of the previous world left), it ends the job
and `hvdgan launch` exits 75, so the requeue path continues from that checkpoint with --resume auto.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from horovod.common.elastic import State
from horovod.common.exceptions import HorovodInternalError, HostsUpdatedInterrupt
from horovod.runner.elastic.worker import HostUpdateResult

from ..config import TrainConfig
from ..dist import watchdog
from ..dist.horovod import hvd, init
from ..dist.world import World
from . import checkpoint as ckpt
from .actions import Action, Tick
from .loop import Trainer, write_result

log = logging.getLogger("hvdgan")


class Commit(State):
    """The last commit, the same on every rank that holds one (new ranks hold none)."""

    def __init__(self, h):
        super().__init__(bcast_object=None, get_rank=h.rank)  # (check_host_updates needs no broadcast)
        self.hvd = h
        self.snapshot: dict | None = None  # a checkpoint's content, on the CPU

    def keep(self, payload: dict) -> None:
        self.snapshot = ckpt.to_cpu(payload, copy=True)

    def newest(self, world: World) -> dict | None:
        """Collective: the newest commit that any rank holds, on rank 0 (None elsewhere, and on every rank
        before the first commit)."""
        steps = world.gather(self.snapshot["step"] if self.snapshot else -1, "hvdgan.elastic.steps")
        src = max(range(len(steps)), key=lambda r: (steps[r], -r))
        if steps[src] < 0:
            return None
        if src != 0:  # rank 0 is new: it gets the state from the first rank that has it
            moved = world.hvd.broadcast_object(self.snapshot if world.rank == src else None, root_rank=src,
                                               name="hvdgan.elastic.snapshot")
            return moved if world.root else None
        return self.snapshot if world.root else None

    def check_host_updates(self) -> None:
        """Horovod's check, as one max-allreduce in place of rank 0's broadcast of a pickled tuple (two
        collectives): a host change that any rank has been told of counts, on every rank alike (upstream's
        own TODO); a new rank's first check takes the old ranks' last change as its own."""
        prev = newest = self._last_updated_timestamp
        update = HostUpdateResult.no_update
        while not self._host_messages.empty():
            timestamp, res = self._host_messages.get()
            if timestamp > newest:
                newest, update = timestamp, update | res
        mine = torch.tensor([prev, newest, bool(update & HostUpdateResult.removed),
                             bool(update & HostUpdateResult.added)], dtype=torch.float64)
        prev, newest, removed, added = self.hvd.allreduce(mine, op=self.hvd.Max, name="hvdgan.elastic.hosts").tolist()
        self._last_updated_timestamp = newest
        if newest > prev:
            raise HostsUpdatedInterrupt(bool(removed) and not added)  # (skip_sync: hosts removed, none added)

    def save(self) -> None:  # (Horovod's commit() calls it: the content was kept by `keep`)
        pass

    def restore(self) -> None:  # (the next Trainer restores from `newest`)
        pass

    def sync(self) -> None:  # (the next Trainer's construction is the sync: new ranks take part in it)
        pass


class CommitAction(Action):
    """Every --commit-every steps and at every checkpoint: keep the state, then check for host changes."""

    def __init__(self, trainer: Trainer, commit: Commit):
        super().__init__("commit", trainer.cfg.distribution.commit_every, at_last=False)
        self.trainer, self.commit = trainer, commit

    def due(self, tick: Tick) -> bool:
        every = self.trainer.cfg.output.checkpoint_every
        return super().due(tick) or (not tick.stopping and not tick.last and bool(every) and tick.step % every == 0)

    def begin(self) -> None:
        self.keep()  # (the world's first state: a loss before the first commit goes back to here)

    def keep(self) -> None:
        t = self.trainer
        self.commit.keep(t.checkpoints.payload(t.gan, t.state, t.cfg.to_dict(), t.arch))

    def run(self, tick: Tick) -> None:
        self.keep()
        self.commit.check_host_updates()  # hvd: collective; raises HostsUpdatedInterrupt on every rank


def write_last_commit(trainer: Trainer, commit: Commit, why: str) -> None:
    """A lost rank: each node's first survivor writes the last commit as a checkpoint (unless it exists) and
    result.json "preempted", in case Horovod cannot re-form the world (local: no collective)."""
    if trainer.world.local_rank != 0 or commit.snapshot is None:
        return
    step = commit.snapshot["step"]
    path = ckpt.path_for(trainer.checkpoints.directory, step)
    try:
        if not path.exists():
            ckpt.write_atomic(commit.snapshot, path)
        write_result(trainer.out, {"status": "preempted", "reason": f"elastic: {why}", "step": step,
                                   "checkpoint": str(path), "out": str(trainer.out)})
    except Exception as exc:  # (the run may still go on: say so, and let Horovod re-form the world)
        log.error("could not write the last commit (step %d) to %s: %s", step, path, exc)
    log.warning("%s: the last commit (step %d) is in %s; waiting for Horovod to re-form the world", why, step, path)


def train_elastic(cfg: TrainConfig, actions: Sequence[Action] = ()) -> dict:
    init()
    h = hvd()
    commit = Commit(h)
    sentinel = watchdog.start_sentinel()  # (a stopped rank is killed: Horovod then goes on without it)

    @h.elastic.run
    def attempt(commit: Commit) -> dict:
        watchdog.cancel()  # (re-forming a world may take up to HOROVOD_ELASTIC_TIMEOUT)
        log.setLevel(logging.INFO if h.rank() == 0 else logging.WARNING)
        trainer = Trainer(cfg, actions, commit=commit)
        trainer.actions.append(CommitAction(trainer, commit))
        try:
            return trainer.run()
        except HorovodInternalError:
            trainer.abandon()
            # (Horovod's message is the same for every cause; Gloo's own error is in its log line above)
            write_last_commit(trainer, commit, "a rank was lost: a collective failed (HorovodInternalError)")
            raise
        except HostsUpdatedInterrupt as exc:
            trainer.abandon()
            if exc.skip_sync:  # (hosts removed: the world shrinks)
                write_last_commit(trainer, commit, "hosts were removed")
            raise

    try:
        return attempt(commit)
    finally:
        watchdog.cancel()
        if sentinel is not None:
            sentinel.kill()
            sentinel.wait()
