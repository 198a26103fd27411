"""`hvdgan train`: the training loop around hvdgan.gan.GAN — data, devices, logging, samples,
checkpoints, resume and preemption. Runs alone or under horovodrun / mpirun / srun --mpi=pmix."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import distributed as dist
from . import stop
from .config import TrainConfig
from .data import ShardedReader, to_float
from .errors import HvdganError
from .gan import GAN
from .metrics import RunLog, features8, frechet_distance, gaussian, plot_losses, save_grid
from .models import Discriminator, Generator, architecture, check_image_size
from .placement import Placement, block_devices, default_device, describe, place
from . import watchdog
from .watchdog import Watchdog

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


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        dist.init()
        self.hvd = hvd = dist.hvd()
        self.rank, self.size = hvd.rank(), hvd.size()
        self.root = self.rank == 0
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // hvd.local_size()))
        self.out = Path(cfg.out)
        self.ckpt_dir = self.out / "checkpoints"

        # data: this rank's shards (errors name the file; the same on every rank)
        self.reader = ShardedReader(cfg.data, rank=self.rank, size=self.size, batch_size=cfg.batch_size,
                                    seed=cfg.seed, in_memory=cfg.in_memory)
        m = self.reader.manifest
        if m.height != m.width:
            raise HvdganError(f"{cfg.data}: images are {m.height}x{m.width}; DCGAN takes square 32x32 or 64x64")
        check_image_size(m.height, f"{cfg.data}: image size")
        if cfg.image_size and cfg.image_size != m.height:
            raise HvdganError(f"--image-size {cfg.image_size} but {cfg.data} holds {m.height}x{m.width} images "
                              f"(re-prepare it with --size {cfg.image_size})")
        if self.reader.batches_per_epoch < 1:
            raise HvdganError(f"{cfg.data}: fewer than --batch-size {cfg.batch_size} images per rank; "
                              "lower the batch size or use fewer ranks")

        # models, placed on this rank's devices
        torch.manual_seed(cfg.seed)
        dev = default_device(cfg.device, hvd.local_rank())
        self.devices = block_devices(Placement.parse(cfg.placement), hvd.local_rank(), hvd.local_size(), dev)
        G = place(Generator(cfg.nz, cfg.ngf, m.channels, m.height), self.devices["G"])
        D = place(Discriminator(cfg.ndf, m.channels, m.height, cfg.spectral_norm), self.devices["D"])
        on_cuda = any(d.type == "cuda" for net in self.devices.values() for d in net.values())
        cfg.amp = on_cuda if cfg.amp is None else cfg.amp
        cfg.channels_last = on_cuda if cfg.channels_last is None else cfg.channels_last
        if cfg.channels_last:
            G.to(memory_format=torch.channels_last)
            D.to(memory_format=torch.channels_last)
        if on_cuda:
            torch.backends.cudnn.benchmark = True
        self.arch = {"G": architecture(G), "D": architecture(D)}
        self.gan = GAN(G, D, cfg, hvd, self.size, ema=self.root)  # only rank 0 samples and saves the EMA
        self.stop = self.gan.stop_flag = stop.StopFlag(hvd)  # USR1/TERM: all ranks stop at one step (stop.py)
        self.real_device = self.gan.real_device
        self.noise_gen = torch.Generator(self.gan.noise_device).manual_seed(cfg.seed * 100_003 + self.rank)
        self.step, self.epoch, self.batch = 0, 0, 0
        self.last_checkpoint = None  # rank 0's newest good checkpoint (named when a run stops on NaN)
        self.total_steps = (cfg.max_steps if cfg.max_steps is not None
                            else cfg.epochs * self.reader.batches_per_epoch // cfg.d_steps)
        self._resume()

    # ---------------------------------------------------------------------------- resume / checkpoint
    def _plan_resume(self) -> dict:
        """Rank 0 decides what to load (the file system may be shared by all ranks), then tells all."""
        path = ckpt.resolve(self.cfg.resume, self.ckpt_dir)
        if path is None and self.cfg.resume == "none" and (ckpt.list_checkpoints(self.ckpt_dir)
                                                           or (self.out / "metrics.jsonl").exists()):
            return {"error": f"{self.out}: holds an earlier run; continue it with --resume auto, "
                             "or choose another --out (nothing was overwritten)"}
        return {"path": str(path) if path else None}

    def _resume(self) -> None:
        plan = self.hvd.broadcast_object(self._plan_resume() if self.root else None, root_rank=0, name="hvdgan.plan")
        if "error" in plan:
            raise HvdganError(plan["error"])
        meta = None
        if plan["path"] and self.root:
            try:
                state = ckpt.load(Path(plan["path"]))
                ckpt.check_architecture(Path(plan["path"]), state["arch"], self.arch)
                self.gan.load_state_dict(state)
                meta = {k: state[k] for k in ("step", "epoch", "batch", "d_updates", "rng", "world_size")}
                meta["path"] = plan["path"]
            except HvdganError as exc:
                meta = {"error": str(exc.message)}
        if plan["path"]:
            meta = self.hvd.broadcast_object(meta, root_rank=0, name="hvdgan.resume")
            if "error" in meta:
                raise HvdganError(meta["error"])
            self.gan.broadcast()  # hvd: rank 0's loaded parameters and optimizer state to every rank
            self.step, self.epoch, self.batch = meta["step"], meta["epoch"], meta["batch"]
            self.last_checkpoint = meta["path"]
            self.gan.d_updates = meta["d_updates"]
            if meta["world_size"] == self.size:
                set_rng_state(self.noise_gen, meta["rng"][self.rank])
            elif self.root:
                log.warning("resuming a %d-rank run on %d ranks: noise streams restart from the seed",
                            meta["world_size"], self.size)
            if self.root:
                log.info("resumed from %s at step %d (epoch %d, batch %d)", meta["path"], self.step, self.epoch,
                         self.batch)

    def save_checkpoint(self) -> Path | None:
        rngs = self.hvd.allgather_object(rng_state(self.noise_gen), name="hvdgan.rng")  # collective: every rank's RNG
        if not self.root:
            return None
        state = self.gan.state_dict()
        state.update(step=self.step, epoch=self.epoch, batch=self.batch, d_updates=self.gan.d_updates,
                     rng=rngs, config=self.cfg.to_dict(), arch=self.arch, world_size=self.size)
        path = ckpt.save(state, self.ckpt_dir, self.step, self.cfg.keep_checkpoints)
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
            (self.out / "config.json").write_text(json.dumps(
                {**cfg.to_dict(), "world_size": self.size, "devices": describe(self.devices)}, indent=2))
            self.runlog = RunLog(self.out, cfg.tensorboard, resume_step=self.step)
            self.fixed_noise = torch.randn(64, cfg.nz, 1, 1, generator=torch.Generator().manual_seed(cfg.seed))
            self.real_stats = gaussian(features8(to_float(self._real_sample(), "cpu")))
            log.info("training %d steps on %d rank(s), batch %d per rank, %s; out: %s", self.total_steps,
                     self.size, cfg.batch_size, describe(self.devices), self.out)
            if self.step == 0:
                self.sample()
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
            for (images, _), wait in timed(self.reader.epoch(self.epoch, start_batch=self.batch)):
                t0 = time.perf_counter()
                real = to_float(images, self.real_device)
                if cfg.channels_last:
                    real = real.contiguous(memory_format=torch.channels_last)
                z = self.gan.noise(real.shape[0], self.noise_gen)
                t_data += time.perf_counter() - t0 + wait
                self.batch += 1
                if not self.gan.step(real, z, self.step + 1):
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
                    if self.root:
                        log.warning("preempted (%s) at step %d: checkpoint %s", signame, self.step,
                                    self.last_checkpoint)
                    result = {"status": "preempted", "signal": signame, "step": self.step}
                    break
                if self.root and (self.step % cfg.sample_every == 0 or last):
                    self.sample()
                if last:
                    break
            else:  # the epoch ran out: the next one starts with a new shard deal
                self.epoch, self.batch = self.epoch + 1, 0
        dog.stop()
        if bar is not None:
            bar.close()
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
        """One small allgather: losses and timings for the log, plus the first non-finite step of every
        rank, so that all ranks stop (or go on) together."""
        stats, n, timers = self.gan.pop_stats(reset=log_it)
        local = torch.cat([stats.double().cpu(), torch.tensor(
            [n, t_data, timers["compute"], timers["allreduce_wait"], self.gan.pop_bad_step()],
            dtype=torch.float64)])
        every = self.hvd.allgather(local.unsqueeze(0), name="hvdgan.sync")  # hvd: [ranks, values]
        k = len(self.gan.STATS)
        bad = [int(b) for b in every[:, k + 4].tolist() if b > 0]
        if bad:
            good = f"; last good checkpoint: {self.last_checkpoint}" if self.root else ""
            raise HvdganError(f"loss became NaN or infinite at step {min(bad)}: stopped{good}. Lower the learning "
                              "rates, or try --loss hinge / --spectral-norm")
        if log_it:
            total = every[:, :k].sum(0)
            n_all = every[:, k].sum().item()
            g_all = max(total[k - 1].item(), 1.0)
            record = {
                "step": self.step, "epoch": self.epoch,
                "loss_d": total[0].item() / n_all, "loss_g": total[1].item() / g_all,
                "d_real": total[2].item() / n_all, "d_fake": total[3].item() / n_all,
                "d_fake_after": total[4].item() / g_all,
                "images_per_s": steps * self.cfg.d_steps * self.cfg.batch_size * self.size / max(elapsed, 1e-9),
                "time_data": every[:, k + 1].mean().item() / max(steps, 1),
                "time_compute": every[:, k + 2].mean().item() / max(steps, 1),
                "time_allreduce_wait": every[:, k + 3].mean().item() / max(steps, 1),
                "time_step": elapsed / max(steps, 1),
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
        with torch.no_grad():
            grid_imgs = model(self.fixed_noise.to(self.gan.noise_device)).float()
            gen = torch.Generator().manual_seed(self.cfg.seed + 1)
            fakes = torch.cat([model(torch.randn(128, self.cfg.nz, 1, 1, generator=gen).to(self.gan.noise_device))
                               .float().cpu() for _ in range(FD_SAMPLES // 128)])
        model.train(was_training)
        samples = self.out / "samples"
        step_png = samples / f"step-{self.step:06d}.png"
        grid = save_grid(grid_imgs, step_png)
        shutil.copyfile(step_png, samples / "latest.png")
        self.runlog.image("samples", grid, self.step)
        fd = frechet_distance(gaussian(features8(fakes)), self.real_stats)
        self.runlog.write({"step": self.step, "epoch": self.epoch, "fd8": fd})

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
