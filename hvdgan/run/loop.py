"""`hvdgan train`: the training loop around hvdgan.gan.GAN — data, devices, logging, samples,
checkpoints, resume and preemption. Runs alone or under horovodrun / mpirun / srun --mpi=pmix."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import history
from .resume import resume_batch, rng_state, set_rng_state
from ..dist import horovod as dist
from ..dist import stop
from ..dist import topology
from ..config import DataFacts, Resolved, TrainConfig, World, resolve
from ..data import ShardedReader, to_float
from ..errors import HvdganError
from ..gan import GAN
from .runlog import RunLog, features8, frechet_distance, gaussian, plot_losses, save_grid
from ..models.placement import default_device, describe, place
from ..dist import watchdog
from ..dist.watchdog import Watchdog
from ..models.zoo import architecture, build, grid_labels

log = logging.getLogger("hvdgan")
FD_SAMPLES = 512  # generated images for the 8x8 Frechet distance at each sample step


def timed(iterable):
    """Yield (item, seconds spent waiting for it)."""
    it = iter(iterable)
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        yield item, time.perf_counter() - t0


class Trainer:
    def __init__(self, options: TrainConfig):
        dist.init()
        self.hvd = hvd = dist.hvd()
        world = World.from_horovod()
        # data: this rank's shards (the reader checks the dataset and the batch size against it, naming the
        # file; the same on every rank)
        self.reader = ShardedReader(options.data, rank=world.rank, size=world.size, batch_size=options.batch_size,
                                    seed=options.seed, in_memory=options.in_memory,
                                    local_size=world.local_size)
        m = self.reader.manifest
        # everything that depends on the devices, the data and the world, decided once
        self.cfg: Resolved = resolve(options, world, DataFacts(m.channels, m.height, self.reader.batches_per_epoch))
        cfg = self.cfg
        self.rank, self.size, self.root = world.rank, world.size, world.rank == 0
        torch.set_num_threads(cfg.threads)
        self.out = Path(cfg.out)
        self.ckpt_dir = self.out / "checkpoints"

        if cfg.conditional and not m.has_labels:
            raise HvdganError(f"{cfg.data}: --conditional needs class labels, but this dataset has none (its "
                              "manifest says labels: null); prepare it from a labelled source (digits, CIFAR-10, "
                              "class sub-folders) or train without --conditional")
        self.classes = len(m.labels) if cfg.conditional else 0

        # models, placed on this rank's devices
        torch.manual_seed(cfg.seed)
        G, D = build(cfg.model, cfg.nz, cfg.ngf, cfg.ndf, cfg.channels, cfg.image_size, cfg.spectral_norm, self.classes)
        G, D = place(G, cfg.devices["G"]), place(D, cfg.devices["D"])
        if cfg.channels_last:
            G.to(memory_format=torch.channels_last)
            D.to(memory_format=torch.channels_last)
        if cfg.on_cuda:
            torch.backends.cudnn.benchmark = True
        self.arch = {"G": architecture(G), "D": architecture(D)}
        self.gan = GAN(G, D, cfg.gan, hvd)
        self.stop = self.gan.stop_flag = stop.StopFlag(hvd)  # USR1/TERM: all ranks stop at one step (stop.py)
        self.real_device = self.gan.real_device
        self.noise_gen = torch.Generator(self.gan.noise_device).manual_seed(cfg.seed * 100_003 + self.rank)
        self.gan.rng = self.noise_gen  # DiffAugment's draws: per rank, saved with the checkpoint
        self.step, self.epoch, self.batch = 0, 0, 0
        self.last_checkpoint = None  # rank 0's newest good checkpoint (named when a run stops on NaN)
        self.resumed_from = None  # never removed by keep-last-K
        self.total_steps = cfg.total_steps
        self.best_fid = float("inf")  # of the --eval-every evaluations (kept in checkpoints)
        self.evaluator = None
        if cfg.eval_every:  # reference features now (cached beside the data), so a bad weights file fails early
            from ..eval.evaluate import for_training

            self.evaluator = for_training(cfg, hvd, default_device(cfg.device, cfg.world.local_rank))
        self._resume()

    # ---------------------------------------------------------------------------- resume / checkpoint
    def _load_resume(self) -> tuple[dict | None, dict | None]:
        """Rank 0 (the file system may be shared by all ranks): the checkpoint to continue from, loaded and
        checked, with its history made linear; (None, None) to start fresh. Errors become {"error": ...}."""
        try:
            ckpt.remove_temporaries(self.ckpt_dir)  # left by a write that a crash or a full disk interrupted
            if self.cfg.resume == "auto":
                path, state = ckpt.newest_readable(self.ckpt_dir)
            else:
                path = ckpt.resolve(self.cfg.resume, self.ckpt_dir)
                state = ckpt.load(path) if path else None
            if path is None:
                if self.cfg.resume == "none" and (ckpt.list_checkpoints(self.ckpt_dir)
                                                  or (self.out / "metrics.jsonl").exists()):
                    return {"error": f"{self.out}: holds an earlier run; continue it with --resume auto, "
                                     "or choose another --out (nothing was overwritten)"}, None
                return None, None
            ckpt.check_architecture(path, state["arch"], self.arch)
            history.abandon_after(self.out, state["step"])  # later checkpoints, metrics, samples: moved aside
        except HvdganError as exc:
            return {"error": str(exc.message)}, None
        meta = {k: state[k] for k in ("step", "epoch", "batch", "d_updates", "rng", "world_size")}
        meta.update(path=str(path), best_fid=state.get("best_fid", float("inf")),
                    batch_size=state["config"]["batch_size"], batches_per_epoch=state["config"].get("batches_per_epoch"))
        return meta, state

    def _resume(self) -> None:
        meta, state = self._load_resume() if self.root else (None, None)
        meta = self.hvd.broadcast_object(meta, root_rank=0, name="hvdgan.resume")
        if meta is None:
            return
        if "error" in meta:
            raise HvdganError(meta["error"])
        if self.root:
            self.gan.load_state_dict(state)
        self.gan.broadcast()  # hvd: rank 0's loaded parameters and optimizer state to every rank
        self.step, self.epoch = meta["step"], meta["epoch"]
        self.batch, moved = resume_batch(meta, self.size, self.cfg.batch_size, self.reader.batches_per_epoch)
        if moved and self.root:
            log.warning(moved)
        self.last_checkpoint = self.resumed_from = meta["path"]
        self.gan.d_updates = meta["d_updates"]
        self.best_fid = meta["best_fid"]
        if meta["world_size"] == self.size:
            set_rng_state(self.noise_gen, meta["rng"][self.rank])
        elif self.root:
            log.warning("resuming a %d-rank run on %d ranks: noise streams restart from the seed",
                        meta["world_size"], self.size)
        if self.root:
            log.info("resumed from %s at step %d (epoch %d, batch %d)", meta["path"], self.step, self.epoch,
                     self.batch)

    def save_checkpoint(self, best: bool = False) -> Path | None:
        """Collective: every rank's RNG state, and a check that nothing is non-finite (parameters and
        optimizer state are identical on every rank; rank 0 also checks G's EMA), so that all ranks stop
        together rather than write a checkpoint that could not be resumed."""
        state = self.gan.state_dict()  # (G's EMA lives on rank 0 only)
        bad = ckpt.first_non_finite(state)
        gathered = self.hvd.allgather_object((rng_state(self.noise_gen), bad), name="hvdgan.rng")  # collective
        bad = next((b for _, b in gathered if b), None)
        if bad:
            raise HvdganError(f"step {self.step}: {bad} is NaN or infinite: no checkpoint written; last good "
                              f"checkpoint: {self.last_checkpoint}. Lower the learning rates, or try --loss hinge "
                              "/ --spectral-norm")
        if not self.root:
            return None
        state.update(step=self.step, epoch=self.epoch, batch=self.batch, d_updates=self.gan.d_updates,
                     rng=[rng for rng, _ in gathered], config=self.cfg.to_dict(), arch=self.arch,
                     world_size=self.size, best_fid=self.best_fid)
        if best:
            return ckpt.save_best(state, self.ckpt_dir)
        protect = [self.resumed_from] if self.resumed_from else []
        path = ckpt.save(state, self.ckpt_dir, self.step, self.cfg.keep_checkpoints, protect=protect)
        self.last_checkpoint = path
        return path

    # ----------------------------------------------------------------------------------- the loop
    def run(self) -> dict:
        cfg = self.cfg
        if self.stop.now():  # a signal during start-up: stop before step 1, nothing written, nothing lost
            if self.root:
                log.warning("preempted at step %d before training (%s): nothing to save", self.step,
                            stop.name(stop.received()) if stop.received() else "a signal on another rank")
            return {"status": "preempted", "step": self.step, "signal": stop.name(stop.received())}
        if self.root:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
            self.runlog = RunLog(self.out, cfg.tensorboard, resume_step=self.step)
            # the fixed grid: 8 x 8, or one row of 8 per class when conditional
            self.fixed_labels = grid_labels(self.classes, 8) if self.classes else None
            self.fixed_noise = torch.randn(8 * self.classes if self.classes else 64, cfg.nz, 1, 1,
                                           generator=torch.Generator().manual_seed(cfg.seed))
            self.real_stats = gaussian(features8(to_float(self._real_sample(), "cpu")))
            log.info("training %d steps on %d rank(s), batch %d per rank, %s; out: %s", self.total_steps,
                     self.size, cfg.batch_size, describe(cfg.devices), self.out)
            if self.step == 0:
                self.sample()
        # every rank's node, local rank and shards -> world.json (a collective; rank 0 made the directory)
        world = topology.record_world(self.hvd, self.reader, self.epoch, self.out)
        if self.root:
            log.info("world: %d rank(s) on %s", self.size, topology.describe_nodes(world))
        bar = None
        if self.root:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, unit="step", disable=None, dynamic_ncols=True)
        t_data = 0.0
        t_window = time.perf_counter()
        steps_in_window = 0
        result = {"status": "done"}
        dog = Watchdog()  # a hung rank (SIGSTOP, a frozen node): every other rank exits (watchdog.py)
        dog.beat()
        while self.step < self.total_steps and result["status"] == "done":
            for (images, labels), wait in timed(self.reader.epoch(self.epoch, start_batch=self.batch)):
                t0 = time.perf_counter()
                real = to_float(images, self.real_device)
                if cfg.channels_last:
                    real = real.contiguous(memory_format=torch.channels_last)
                z = self.gan.noise(real.shape[0], self.noise_gen)
                y = labels.to(self.real_device) if self.classes else None
                t_data += time.perf_counter() - t0 + wait
                self.batch += 1
                if not self.gan.step(real, z, self.step + 1, y):
                    continue
                self.step += 1
                steps_in_window += 1
                dog.beat()
                if bar is not None:
                    bar.update(1)
                last = self.step == self.total_steps
                stopping = self.stop.poll() and not last  # a signal on any rank: the same step on every rank
                due_log = self.step % cfg.log_every == 0 or last or stopping
                due_ckpt = self.step % cfg.checkpoint_every == 0 or last or stopping
                if due_log or due_ckpt:
                    # a window's time covers everything since the last one: its sync, samples, checkpoints
                    now = time.perf_counter()
                    self.sync(t_data, now - t_window, steps_in_window, log_it=due_log, bar=bar)
                    if due_log:  # (a checkpoint-only sync leaves the log window running)
                        t_data, t_window, steps_in_window = 0.0, now, 0
                    if due_ckpt:
                        self.save_checkpoint()
                if stopping:
                    signame = stop.name(stop.received()) if stop.received() else "a signal on another rank"
                    # which ranks the signal reached (on several nodes: did it reach every node?)
                    seen = self.hvd.allgather_object(stop.received(), name="hvdgan.stop.seen")  # collective
                    if self.root:
                        log.warning("preempted (%s, seen by rank(s) %s) at step %d: checkpoint %s", signame,
                                    ",".join(str(r) for r, s in enumerate(seen) if s), self.step,
                                    self.last_checkpoint)
                    result = {"status": "preempted", "signal": signame, "step": self.step}
                    break
                if self.root and (self.step % cfg.sample_every == 0 or last):
                    self.sample()
                if self.evaluator is not None and (self.step % cfg.eval_every == 0 or last):
                    self.evaluate()
                if last:
                    break
            else:  # the epoch ran out: the next one starts with a new shard deal
                self.epoch, self.batch = self.epoch + 1, 0
        dog.stop()
        if bar is not None:
            bar.close()
        result["parameters_identical"] = topology.parameters_agree(self.hvd, (self.gan.G, self.gan.D))  # collective
        if self.root:
            self.runlog.close()
            # (a stopped run leaves the plot to its end: it must be gone before Slurm's KILL)
            plot = (plot_losses(self.out / "metrics.jsonl", self.out / "losses.png")
                    if result["status"] == "done" else None)
            result.update(step=self.step, out=str(self.out), checkpoint=str(self.last_checkpoint),
                          samples=str(self.out / "samples" / "latest.png"), plot=str(plot) if plot else None)
            (self.out / "result.json").write_text(json.dumps(result, indent=2))
            log.info("%s at step %d: samples %s, loss plot %s, checkpoint %s", result["status"], self.step,
                     result["samples"], result["plot"], result["checkpoint"])
        if result["status"] == "preempted":  # hvd: no rank exits (75) before rank 0 has written everything,
            self.hvd.barrier()               # or srun --kill-on-bad-exit would kill it mid-write
        return result

    def sync(self, t_data: float, elapsed: float, steps: int, log_it: bool, bar=None) -> None:
        """One small allgather: the GAN's statistics and the data time for the log, plus the first
        non-finite step of every rank, so that all ranks stop (or go on) together. (The stop flag of a
        signal travels every step: stop.py.)"""
        stats = self.gan.stats
        local = stats.pack(time_data=t_data, bad_step=self.gan.pop_bad_step())
        every = stats.unpack(self.hvd.allgather(local.unsqueeze(0), name="hvdgan.sync"))  # hvd: [ranks, values]
        if log_it:  # (a checkpoint-only sync leaves the log window running)
            stats.reset()
        bad = [int(b) for b in every["bad_step"].tolist() if b > 0]
        if bad:
            good = f"; last good checkpoint: {self.last_checkpoint}" if self.root else ""
            raise HvdganError(f"loss became NaN or infinite at step {min(bad)}: stopped{good}. Lower the learning "
                              "rates, or try --loss hinge / --spectral-norm")
        if log_it:
            per_step = max(steps, 1)
            record = {
                "step": self.step, "epoch": self.epoch,
                **{name: every.mean(name) for name in ("loss_d", "loss_g", "d_real", "d_fake", "d_fake_after")},
                "images_per_s": steps * self.cfg.d_steps * self.cfg.batch_size * self.size / max(elapsed, 1e-9),
                **{name: every[name].mean().item() / per_step
                   for name in ("time_data", "time_compute", "time_allreduce_wait")},
                "time_step": elapsed / per_step,
            }
            if self.root:
                self.runlog.write(record)
                line = (f"step {self.step}/{self.total_steps} epoch {self.epoch} | loss D {record['loss_d']:.3f} "
                        f"G {record['loss_g']:.3f} | D(x) {record['d_real']:.3f} D(G(z)) {record['d_fake']:.3f} "
                        f"| {record['images_per_s']:.0f} img/s")
                if bar is not None and not bar.disable:
                    bar.set_postfix_str(line.split(" | ", 1)[1], refresh=False)
                else:
                    log.info(line)

    def sample(self) -> None:
        """Rank 0: the fixed-noise grid from G's EMA, and the 8x8 Frechet distance to the real data."""
        model = self.gan.sample_model()
        was_training = model.training
        model.eval()
        dev = self.gan.noise_device
        cond = (lambda y: (y.to(dev),)) if self.classes else (lambda y: ())
        every_class = torch.arange(128) % max(self.classes, 1)
        with torch.no_grad():
            grid_imgs = model(self.fixed_noise.to(dev), *cond(self.fixed_labels)).float()
            gen = torch.Generator().manual_seed(self.cfg.seed + 1)
            fakes = torch.cat([model(torch.randn(128, self.cfg.nz, 1, 1, generator=gen).to(dev), *cond(every_class))
                               .float().cpu() for _ in range(FD_SAMPLES // 128)])
        model.train(was_training)
        samples = self.out / "samples"
        step_png = samples / f"step-{self.step:06d}.png"
        grid = save_grid(grid_imgs, step_png)
        shutil.copyfile(step_png, samples / "latest.png")
        self.runlog.image("samples", grid, self.step)
        fd = frechet_distance(gaussian(features8(fakes)), self.real_stats)
        self.runlog.write({"step": self.step, "epoch": self.epoch, "fd8": fd})

    def evaluate(self) -> None:
        """Every rank: Inception metrics of G's EMA (hvdgan/eval/evaluate.py); a new best FID -> ckpt-best.pt."""
        result = self.evaluator.evaluate(self.gan)
        if self.root:
            self.runlog.write({"step": self.step, "epoch": self.epoch, **result})
            log.info("step %d: %s (%.0f s)", self.step, ", ".join(f"{k} {v:.4g}" for k, v in result.items()
                                                                  if k != "eval_seconds"), result["eval_seconds"])
        if result.get("fid", float("inf")) < self.best_fid:  # (the same numbers on every rank)
            self.best_fid = result["fid"]
            self.save_checkpoint(best=True)

    def _real_sample(self, limit: int = 2048) -> torch.Tensor:
        """Up to `limit` real images (uint8) for the Frechet-distance reference."""
        reader = ShardedReader(self.cfg.data, rank=0, size=1, batch_size=min(256, self.reader.manifest.count),
                               seed=self.cfg.seed, in_memory=False)
        chunks, n = [], 0
        for images, _ in reader.epoch(0):
            chunks.append(images)
            n += len(images)
            if n >= limit:
                break
        return torch.cat(chunks)[:limit]


def train(cfg: TrainConfig) -> dict:
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[hvdgan %(asctime)s] %(message)s", datefmt="%H:%M:%S"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.INFO)
    trainer = Trainer(cfg)
    if trainer.rank != 0:
        log.setLevel(logging.WARNING)
    try:
        return trainer.run()
    finally:
        watchdog.cancel()  # (an error left the loop with the watchdog armed)
