"""What the training loop does between steps: periodic actions, run in order after every generator step.

An action runs every `every` steps (0: never by count), at the run's last step (`at_last`), and at the
step a stop request ends the run on (`at_stop`: forced then; an action without it does not run at that
step). The standard ones, in their order:

    progress    the watchdog's heartbeat and the progress bar                every step
    log         the statistics of every rank, gathered (NaN check); metrics   --log-every, last, stop
    checkpoint  a checkpoint (after a NaN check)                              --checkpoint-every, last, stop
    stop        the preemption's log line and result                          stop
    sample      rank 0: the fixed-noise grid and the 8x8 Frechet distance     --sample-every, last
    evaluate    Inception FID etc. of G's EMA; the best one kept              --eval-every, last

Collective actions (log, checkpoint, stop, evaluate) are due at the same steps on every rank: `due` reads
only the step and the stop decision, which all ranks share.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..data import ShardedReader, to_float
from ..dist import stop, watchdog
from ..errors import HvdganError
from ..models.zoo import grid_labels
from .checkpointer import NON_FINITE_ADVICE
from .collapse import COLLAPSE_FRACTION, CollapseWatch
from .runlog import features8, frechet_distance, gaussian, read_metrics, save_grid

log = logging.getLogger("hvdgan")
FD_SAMPLES = 512  # generated images for the 8x8 Frechet distance at each sample step


@dataclass
class Tick:
    """The generator step just completed, as the actions see it."""

    step: int
    last: bool  # the run's last step
    stopping: bool  # a stop request reached every rank: this job ends after this step
    synced: bool = False  # the ranks' statistics were gathered at this step (log, or a checkpoint's NaN check)


@dataclass
class Action:
    name: str
    every: int
    fn: Callable[[Tick], None] | None = None
    at_last: bool = True
    at_stop: bool = False

    def due(self, tick: Tick) -> bool:
        if tick.stopping:
            return self.at_stop
        return bool(self.every and tick.step % self.every == 0) or (tick.last and self.at_last)

    def run(self, tick: Tick) -> None:
        self.fn(tick)

    def begin(self) -> None:
        """Before the first step of this job (after the run directory is made)."""

    def end(self) -> None:
        """After the last step of this job, whatever ended it."""


def standard(trainer) -> list[Action]:
    progress = Progress(trainer)
    log_ = Log(trainer, progress)
    actions = [progress, log_, Checkpoint(trainer, log_), Preempt(trainer)]
    if trainer.world.root:
        actions.append(Sample(trainer))
    if trainer.evaluator is not None:
        actions.append(Evaluate(trainer))
    return actions


class Progress(Action):
    def __init__(self, trainer):
        super().__init__("progress", 1, at_stop=True)
        self.trainer, self.bar = trainer, None
        self.dog = watchdog.Watchdog()  # a hung rank (SIGSTOP, a frozen node): every other rank exits

    def begin(self) -> None:
        if self.trainer.world.root:
            from tqdm import tqdm

            self.bar = tqdm(total=self.trainer.cfg.total_steps, initial=self.trainer.state.step, unit="step",
                            disable=None, dynamic_ncols=True)
        self.dog.beat()

    def run(self, tick: Tick) -> None:
        self.dog.beat()
        if self.bar is not None:
            self.bar.update(1)

    def end(self) -> None:
        self.dog.stop()
        if self.bar is not None:
            self.bar.close()


class Log(Action):
    """One small allgather: the GAN's statistics and the data time for the log, plus the first non-finite
    step of every rank, so that all ranks stop (or go on) together. A window's time covers everything
    since the last log: its sync, samples, checkpoints."""

    def __init__(self, trainer, progress: Progress):
        super().__init__("log", trainer.cfg.output.log_every, at_stop=True)
        self.trainer, self.progress = trainer, progress

    def begin(self) -> None:
        self.window_start, self.window_step = time.perf_counter(), self.trainer.state.step

    def run(self, tick: Tick) -> None:
        self.sync(tick, log_it=True)

    def sync(self, tick: Tick, log_it: bool) -> None:
        t, stats = self.trainer, self.trainer.gan.stats
        local = stats.pack(time_data=t.time_data, bad_step=t.gan.pop_bad_step())
        every = stats.unpack(t.world.hvd.allgather(local.unsqueeze(0), name="hvdgan.sync"))  # hvd: [ranks, values]
        tick.synced = True
        bad = [int(b) for b in every["bad_step"].tolist() if b > 0]
        if bad:
            good = f"; last good checkpoint: {t.checkpoints.last}" if t.world.root else ""
            raise HvdganError(f"loss became NaN or infinite at step {min(bad)}: stopped{good}. {NON_FINITE_ADVICE}")
        if not log_it:  # (a checkpoint's check leaves the log window running)
            return
        stats.reset()
        now = time.perf_counter()
        elapsed, steps = now - self.window_start, max(tick.step - self.window_step, 1)
        self.window_start, self.window_step, t.time_data = now, tick.step, 0.0
        record = {
            "step": tick.step, "epoch": t.state.epoch,
            **{name: every.mean(name) for name in t.gan.LOSSES},
            "images_per_s": (steps * t.cfg.optim.d_steps * t.cfg.schedule.batch_size * t.world.size
                             / max(elapsed, 1e-9)),
            **{name: every[name].mean().item() / steps for name in ("time_data", *t.gan.TIMES)},
            "time_step": elapsed / steps,
        }
        if t.world.root:
            t.runlog.write(record)
            line = (f"step {tick.step}/{t.cfg.total_steps} epoch {t.state.epoch} | loss D {record['loss_d']:.3f} "
                    f"G {record['loss_g']:.3f} | D(x) {record['d_real']:.3f} D(G(z)) {record['d_fake']:.3f} "
                    f"| {record['images_per_s']:.0f} img/s")
            bar = self.progress.bar
            if bar is not None and not bar.disable:
                bar.set_postfix_str(line.split(" | ", 1)[1], refresh=False)
            else:
                log.info(line)


class Checkpoint(Action):
    def __init__(self, trainer, log_: Log):
        super().__init__("checkpoint", trainer.cfg.output.checkpoint_every, at_stop=True)
        self.trainer, self.log = trainer, log_

    def run(self, tick: Tick) -> None:
        if not tick.synced:  # the ranks' NaN check first: a non-finite run stops before it writes
            self.log.sync(tick, log_it=False)
        self.trainer.save_checkpoint()


class Preempt(Action):
    """A stop request reached every rank: log which ranks the signal reached (on several nodes: did it
    reach every node?), and end the run as preempted."""

    def __init__(self, trainer):
        super().__init__("stop", 0, at_last=False, at_stop=True)
        self.trainer = trainer

    def run(self, tick: Tick) -> None:
        t = self.trainer
        signame = stop.name(stop.received()) if stop.received() else "a signal on another rank"
        seen = t.world.hvd.allgather_object(stop.received(), name="hvdgan.stop.seen")  # collective
        seen_by = [r for r, s in enumerate(seen) if s]
        if t.world.root:
            log.warning("preempted (%s, seen by rank(s) %s) at step %d: checkpoint %s", signame,
                        ",".join(map(str, seen_by)), tick.step, t.checkpoints.last)
        t.result = {"status": "preempted", "signal": signame, "step": tick.step, "seen_by": seen_by}


class Sample(Action):
    """Rank 0: the fixed-noise grid from G's EMA (8 x 8, or one row of 8 per class when conditional), and
    the 8x8 Frechet distance of FD_SAMPLES images to the real data, and their diversity (collapse.py)."""

    def __init__(self, trainer):
        super().__init__("sample", trainer.cfg.output.sample_every)
        self.trainer = trainer

    def begin(self) -> None:
        t, cfg = self.trainer, self.trainer.cfg
        self.fixed_labels = grid_labels(t.classes, 8) if t.classes else None
        self.fixed_noise = torch.randn(8 * t.classes if t.classes else 64, cfg.network.nz, 1, 1,
                                       generator=torch.Generator().manual_seed(cfg.schedule.seed))
        real, labels = self.real_sample()
        real = to_float(real, "cpu")
        self.real_stats = gaussian(features8(real))
        self.collapse = CollapseWatch(real, labels if t.classes else None, t.reader.manifest.labels)
        self.collapse.was_diverse = any(r.get("diversity", 0) >= COLLAPSE_FRACTION  # (a resumed run's history)
                                        for r in read_metrics(t.out / "metrics.jsonl"))
        if t.state.step == 0:
            self.run(Tick(0, False, False))

    def run(self, tick: Tick) -> None:
        t = self.trainer
        model = t.gan.sample_model()
        was_training = model.training
        model.eval()
        dev = t.gan.noise_device
        cond = (lambda y: (y.to(dev),)) if t.classes else (lambda y: ())
        every_class = torch.arange(128) % max(t.classes, 1)
        with torch.no_grad():
            grid_imgs = model(self.fixed_noise.to(dev), *cond(self.fixed_labels)).float()
            gen = torch.Generator().manual_seed(t.cfg.schedule.seed + 1)
            fakes = torch.cat([model(torch.randn(128, t.cfg.network.nz, 1, 1, generator=gen).to(dev),
                                     *cond(every_class)).float().cpu() for _ in range(FD_SAMPLES // 128)])
        model.train(was_training)
        samples = t.out / "samples"
        step_png = samples / f"step-{tick.step:06d}.png"
        grid = save_grid(grid_imgs, step_png)
        shutil.copyfile(step_png, samples / "latest.png")
        t.runlog.image("samples", grid, tick.step)
        fd = frechet_distance(gaussian(features8(fakes)), self.real_stats)
        labels = every_class.repeat(FD_SAMPLES // 128) if t.classes else None
        record = {"step": tick.step, "fd8": fd, **self.collapse.check(fakes, labels, tick.step, tick.last)}
        t.quality.update(record)
        t.runlog.write({"step": tick.step, "epoch": t.state.epoch, **record})

    def real_sample(self, limit: int = 2048) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Up to `limit` real images (uint8) and their labels, for the Frechet distance's and the diversity's
        references."""
        t = self.trainer
        reader = ShardedReader(t.cfg.dataset.data, rank=0, size=1, seed=t.cfg.schedule.seed, in_memory=False,
                               batch_size=min(256, t.reader.manifest.count))
        chunks, label_chunks, n = [], [], 0
        for images, labels in reader.epoch(0):
            chunks.append(images)
            label_chunks.append(labels)
            n += len(images)
            if n >= limit:
                break
        labels = torch.cat(label_chunks)[:limit] if label_chunks[0] is not None else None
        return torch.cat(chunks)[:limit], labels


class Evaluate(Action):
    """Every rank: Inception metrics of G's EMA (hvdgan.eval.evaluate); a new best FID -> ckpt-best.pt."""

    def __init__(self, trainer):
        super().__init__("evaluate", trainer.cfg.evaluation.eval_every)
        self.trainer = trainer

    def run(self, tick: Tick) -> None:
        t = self.trainer
        result = t.evaluator.evaluate(t.gan)
        if t.world.root:
            t.quality.update(step=tick.step, **{k: v for k, v in result.items() if k != "eval_seconds"})
            t.runlog.write({"step": tick.step, "epoch": t.state.epoch, **result})
            log.info("step %d: %s (%.0f s)", tick.step, ", ".join(f"{k} {v:.4g}" for k, v in result.items()
                                                                   if k != "eval_seconds"), result["eval_seconds"])
        if result.get("fid", float("inf")) < t.state.best_fid:  # (the same numbers on every rank)
            t.state.best_fid = result["fid"]
            t.save_checkpoint(best=True)
