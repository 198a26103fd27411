"""`hvdgan train`: the training loop around hvdgan.gan.GAN. Runs alone or under horovodrun / mpirun /
srun --mpi=pmix.

`Trainer(options)` builds a run in phases (the world and the data; the configuration, resolved once; the
networks and the GAN step; evaluation; the checkpoint to continue from), then `run()` is the loop: the
next batch, `gan.step`, and after each generator step the periodic actions (hvdgan.run.actions: progress,
log, checkpoint, stop, sample, evaluate). A feature that acts between steps adds an `Action`, e.g.
`Trainer(options, actions=[Action("budget", 1, check_budget)])`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..config import DataFacts, Resolved, TrainConfig, resolve
from ..data import ShardedReader, to_float
from ..dist import stop, topology, watchdog
from ..dist.world import World
from ..errors import HvdganError
from ..gan import GAN, first_device
from ..logs import setup_logging
from ..models import check_images
from ..models.placement import describe, evaluation_device, place
from ..models.zoo import architecture, build_networks
from . import actions as periodic
from .actions import Action, Tick
from .checkpoint import check_file, file_mode
from .checkpointer import Checkpointer
from .lock import RunLock
from .runlog import RunLog, plot_losses
from .state import RunState

log = logging.getLogger("hvdgan")


class Trainer:
    def __init__(self, options: TrainConfig, actions: Sequence[Action] = (), stop_flag=stop.StopFlag, commit=None):
        """`actions`: run after the standard ones at every generator step. `stop_flag`: the class of the
        collective stop decision (None: signals are not polled; benchmarks only). `commit`: an elastic run's
        hvdgan.run.elastic.Commit, whose newest state (any rank's) this trainer continues from."""
        # 1. the world and this rank's shards (the reader checks the dataset and the batch size against it,
        #    naming the file; the same on every rank)
        self.world = world = World.from_horovod()
        data, schedule = options.dataset, options.schedule
        self.reader = ShardedReader(data.data, rank=world.rank, size=world.size, batch_size=schedule.batch_size,
                                    seed=schedule.seed, in_memory=data.in_memory, local_size=world.local_size)
        m = self.reader.manifest
        check_images(m.height, m.width, str(m.path))  # a size the networks are built for
        # 2. everything that depends on the devices, the data and the world, decided once
        self.cfg: Resolved = resolve(options, world, DataFacts(m.channels, m.height, self.reader.batches_per_epoch))
        cfg = self.cfg
        torch.set_num_threads(cfg.threads)
        self.out = Path(cfg.output.out)
        if cfg.network.conditional and not m.has_labels:
            raise HvdganError(f"{cfg.dataset.data}: --conditional needs class labels, but this dataset has none (its "
                              "manifest says labels: null); prepare it from a labelled source (digits, CIFAR-10, "
                              "class sub-folders) or train without --conditional")
        self.classes = len(m.labels) if cfg.network.conditional else 0
        # 3. the networks on this rank's devices, and the GAN step with its Horovod optimizers
        net = cfg.network
        torch.manual_seed(cfg.schedule.seed)
        G, D = build_networks(net.model, net.nz, net.ngf, net.ndf, cfg.channels, cfg.image_size, net.spectral_norm, self.classes)
        G, D = place(G, cfg.devices["G"]), place(D, cfg.devices["D"])
        if cfg.channels_last:
            G.to(memory_format=torch.channels_last)
            D.to(memory_format=torch.channels_last)
        if cfg.on_cuda:
            torch.backends.cudnn.benchmark = True
        self.arch = {"G": architecture(G), "D": architecture(D)}
        noise = torch.Generator(first_device(G)).manual_seed(cfg.schedule.seed * 100_003 + world.rank)  # per rank
        self.state = RunState(noise=noise)
        self.stop = stop_flag(world.hvd) if stop_flag else None  # a stop signal: all ranks stop at one step
        self.gan = GAN(G, D, cfg.gan, world.hvd, stop_flag=self.stop, rng=noise)
        # 4. evaluation: reference features now (cached beside the data), so that a bad weights file fails early
        self.evaluator = None
        if cfg.evaluation.eval_every:
            from ..eval.evaluate import for_training

            self.evaluator = for_training(cfg, world, evaluation_device(cfg.devices))
        # 5. the run directory, held by this run alone, and the checkpoint (or elastic commit) to continue from
        self.lock = world.on_root(lambda: claim(self.out, cfg.output.resume, commit), "hvdgan.lock")
        self.checkpoints = Checkpointer(self.out, cfg.output.keep_checkpoints, world)
        self.commit = commit
        try:
            snapshot = commit.newest(world) if commit is not None else None  # (collective)
            self.checkpoints.restore(cfg.output.resume, self.gan, self.state, self.arch, cfg.schedule.batch_size,
                                     self.reader.batches_per_epoch, snapshot=snapshot)
        except BaseException:  # a start that fails leaves the run directory free
            if self.lock is not None:
                self.lock.release()
            raise
        self.runlog: RunLog | None = None  # rank 0's, from run() on
        self.actions = periodic.standard(self) + list(actions)
        self.result = {"status": "done"}
        self.quality: dict = {}  # rank 0's latest fd8 and diversity (Sample), FID, precision, recall (Evaluate)
        self.time_data = 0.0  # of the log window: waiting for batches and moving them to the device

    # ----------------------------------------------------------------------------------- the loop
    def run(self) -> dict:
        state = self.state
        if self.stop is not None and self.stop.now():  # a signal during start-up: nothing written, nothing lost
            return self.stopped_before_training()
        self.begin()
        for real, z, y in self.batches():
            if not self.gan.step(real, z, state.step + 1, y):
                continue  # a discriminator step only (--d-steps)
            state.step += 1
            last = state.step == self.cfg.total_steps
            tick = Tick(state.step, last, stopping=self.stop is not None and self.stop.poll() and not last)
            for action in self.actions:
                if action.due(tick):
                    action.run(tick)
            if tick.last or tick.stopping:
                break
        return self.finish()

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """(real images, noise, labels or None) on their devices, from the resume point on, epoch after epoch
        (each with a new deal of the images), while steps remain."""
        state, cfg = self.state, self.cfg
        while state.step < cfg.total_steps:
            epoch = iter(self.reader.epoch(state.epoch, start_batch=state.batch))
            while True:
                t0 = time.perf_counter()
                images, labels = next(epoch, (None, None))
                if images is None:
                    break
                real = to_float(images, self.gan.real_device)
                if cfg.channels_last:
                    real = real.contiguous(memory_format=torch.channels_last)
                z = self.gan.noise(real.shape[0], state.noise)
                y = labels.to(self.gan.real_device) if self.classes else None
                self.time_data += time.perf_counter() - t0
                state.batch += 1
                yield real, z, y
            state.epoch, state.batch = state.epoch + 1, 0

    # ------------------------------------------------------------------------------ start and end
    def begin(self) -> None:
        """Rank 0's run directory, log and first grid; every rank's place in world.json."""
        cfg, world = self.cfg, self.world
        if world.root:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
            self.runlog = RunLog(self.out, cfg.output.tensorboard, resume_step=self.state.step)
            log.info("training %d steps on %d rank(s), batch %d per rank, %s; out: %s", cfg.total_steps,
                     world.size, cfg.schedule.batch_size, describe(cfg.devices), self.out)
        # every rank's node, local rank and shards -> world.json (a collective; rank 0 made the directory)
        nodes = topology.record_world(world.hvd, self.reader, self.state.epoch, self.out, self.state.step)
        if world.root:
            log.info("world: %d rank(s) on %s", world.size, topology.describe_nodes(nodes))
            if self.commit is not None:  # elastic: a re-formed world leaves no "preempted" result behind,
                (self.out / "result.json").unlink(missing_ok=True)  # and metrics.jsonl records each world
                self.runlog.write({"step": self.state.step, "event": "world", "size": world.size,
                                   "nodes": topology.nodes_of(nodes), "time": time.time()})
        for action in reversed(self.actions):  # (the first ones, progress and log, start their clocks last)
            action.begin()

    def finish(self) -> dict:
        for action in self.actions:
            action.end()
        result = self.result
        result["parameters_identical"] = topology.parameters_agree(self.world.hvd, (self.gan.G, self.gan.D))
        if self.world.root:
            self.runlog.close()
            # (a stopped run leaves the plot to its end: it must be gone before Slurm's KILL)
            plot = (plot_losses(self.out / "metrics.jsonl", self.out / "losses.png")
                    if result["status"] == "done" else None)
            last = self.checkpoints.last
            result.update(step=self.state.step, out=str(self.out), checkpoint=str(last) if last else None,
                          samples=str(self.out / "samples" / "latest.png"), plot=str(plot) if plot else None,
                          quality=self.quality)
            write_result(self.out, result)
            made = {"samples": result["samples"], "loss plot": result["plot"], "checkpoint": last}
            log.info("%s at step %d: %s", result["status"], self.state.step,  # (what is there: no "None")
                     ", ".join(f"{what} {path}" for what, path in made.items() if path) or "nothing written")
            self.lock.release()
        if result["status"] == "preempted":  # hvd: no rank exits (75) before rank 0 has written everything,
            self.world.hvd.barrier()         # or srun --kill-on-bad-exit would kill it mid-write
        return result

    def abandon(self) -> None:
        """Horovod interrupted the run (an elastic membership change): end this trainer's local part (the
        watchdog, the progress bar, the log, the run directory's lock), with no collective and nothing written
        but the log; the next trainer continues from the last commit."""
        try:
            for action in self.actions:
                try:
                    action.end()
                except Exception as exc:  # (the next world must still start: say it, go on)
                    log.warning("ending %s after a world change: %s", action.name, exc)
            if self.runlog is not None:
                self.runlog.close()
        finally:
            if self.lock is not None:
                self.lock.release()

    def stopped_before_training(self) -> dict:
        result = {"status": "preempted", "step": self.state.step, "signal": stop.name(stop.received())}
        if self.world.root:
            write_result(self.out, result)
            self.lock.release()
            log.warning("preempted at step %d before training (%s): nothing to save", self.state.step,
                        stop.name(stop.received()) if stop.received() else "a signal on another rank")
        return result

    def save_checkpoint(self, best: bool = False) -> Path | None:
        """Collective: see Checkpointer.save."""
        return self.checkpoints.save(self.gan, self.state, self.cfg.to_dict(), self.arch, best=best)


def claim(out: Path, resume: str, commit) -> RunLock:
    """Rank 0: the run directory's lock, once what is sure to stop the start has been ruled out (a --resume
    file that is not there, or not a checkpoint, must not leave a new run directory behind)."""
    if commit is None and resume not in ("none", "auto", "", None):
        if not Path(resume).is_file():
            raise HvdganError(f"--resume {resume}: no such checkpoint file (--resume takes none, auto or a "
                              "checkpoint)")
        check_file(Path(resume))
    return RunLock(out).acquire(take_over=commit is not None)


def train(cfg: TrainConfig, actions: Sequence[Action] = ()) -> dict:
    setup_logging()
    if cfg.distribution.elastic:
        from .elastic import train_elastic

        return train_elastic(cfg, actions)
    trainer = Trainer(cfg, actions)
    if not trainer.world.root:
        log.setLevel(logging.WARNING)
    try:
        return trainer.run()
    finally:
        watchdog.cancel()  # (an error left the loop with the watchdog armed)
        if trainer.lock is not None:  # (and with the run directory held: free it for a next run in this process)
            trainer.lock.release()


def write_result(out: Path, result: dict) -> None:
    """result.json: how the run ended (`hvdgan launch` reads its status), written whole or not at all (by
    several processes at once too: the survivors of an elastic run)."""
    fd, tmp = tempfile.mkstemp(prefix=".result.json.", suffix=".tmp", dir=out)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(result, indent=2))
    os.chmod(tmp, file_mode())
    os.replace(tmp, out / "result.json")
