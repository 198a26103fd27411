"""The GAN step: the seed's five steps, data-parallel with Horovod.

    1. G makes a batch of fakes from noise
    2. D scores real and fake images (the fakes detached: G's gradients are not computed)
    3. D's update: backward all-reduces D's gradients (Horovod hooks), step() waits for them
    4. G's loss through D, with D frozen, so that only G's hooks fire (hvd#796, #2559)
    5. G's update, then G's moving average (EMA) for samples

The Horovod lines are marked `# hvd:`. Everything else is plain PyTorch.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .config import TrainConfig


# ----------------------------------------------------------------------------------------- losses
def d_loss(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    if kind == "bce":  # the seed's BCE, on logits for numerical safety
        return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    raise ValueError(kind)


def g_loss(kind: str, fake_logits: torch.Tensor) -> torch.Tensor:
    if kind == "bce":  # non-saturating: maximise log D(G(z))
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    if kind == "hinge":
        return -fake_logits.mean()
    raise ValueError(kind)


@contextlib.contextmanager
def frozen(model: nn.Module):
    """No gradients for `model`'s parameters inside the block, so its Horovod hooks stay quiet."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def ema_with_warmup(decay: float):
    """AveragedModel's multi_avg_fn for an EMA whose decay ramps up as min(decay, (1 + n) / (10 + n)):
    early on the average follows G closely instead of dragging its random initial weights along for
    ~1/(1 - decay) steps (as TensorFlow's ExponentialMovingAverage with num_updates)."""

    @torch.no_grad()
    def update(ema_params, model_params, num_averaged):
        n = float(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        floats = [(e, m) for e, m in zip(ema_params, model_params) if e.is_floating_point()]
        if floats:
            torch._foreach_lerp_([e for e, _ in floats], [m for _, m in floats], 1 - d)
        for e, m in zip(ema_params, model_params):
            if not e.is_floating_point():  # counters such as BatchNorm's num_batches_tracked
                e.copy_(m)

    return update


def lr_scale(kind: str, world_size: int) -> float:
    return {"none": 1.0, "linear": float(world_size), "sqrt": math.sqrt(world_size)}[kind]


def first_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def last_device(model: nn.Module) -> torch.device:
    return list(model.parameters())[-1].device


# ------------------------------------------------------------------------------------------ the GAN
class GAN:
    """G, D, their Horovod optimizers and G's EMA; `step(real)` is one iteration of the loop."""

    # order of the values in `stats` (summed on the loss device; averaged over ranks at log time)
    STATS = ("loss_d", "loss_g", "d_real", "d_fake", "d_fake_after", "g_steps")

    def __init__(self, G: nn.Module, D: nn.Module, cfg: TrainConfig, hvd, world_size: int = 1, ema: bool = True):
        self.G, self.D, self.cfg, self.hvd = G, D, cfg, hvd
        if cfg.sync_bn:  # hvd: BatchNorm statistics over all ranks
            from . import syncbn

            counter = [0]
            syncbn.convert(G, counter)
            syncbn.convert(D, counter)
        scale = lr_scale(cfg.lr_scaling, world_size)
        betas = (cfg.beta1, cfg.beta2)
        self.lr_g, self.lr_d = cfg.lr_g * scale, cfg.lr_d * scale
        fused_g = all(p.is_cuda for p in G.parameters())
        fused_d = all(p.is_cuda for p in D.parameters())
        opt_g = torch.optim.Adam(G.parameters(), lr=self.lr_g, betas=betas, fused=fused_g or None)
        opt_d = torch.optim.Adam(D.parameters(), lr=self.lr_d, betas=betas, fused=fused_d or None)
        compression = hvd.Compression.fp16 if cfg.fp16_allreduce else hvd.Compression.none
        # hvd: both optimizers all-reduce their gradients; distinct name prefixes keep G's and D's apart
        self.opt_g = hvd.DistributedOptimizer(opt_g, named_parameters=[("G." + n, p) for n, p in G.named_parameters()],
                                              compression=compression)
        self.opt_d = hvd.DistributedOptimizer(opt_d, named_parameters=[("D." + n, p) for n, p in D.named_parameters()],
                                              compression=compression)
        self.broadcast()
        self.ema = (AveragedModel(G, multi_avg_fn=ema_with_warmup(cfg.ema), use_buffers=True)
                    if cfg.ema > 0 and ema else None)
        self.noise_device = first_device(G)
        self.stop_flag = None  # hvdgan.stop.StopFlag: submitted with D's gradients every D update
        self.real_device = first_device(D)
        self.loss_device = last_device(D)
        self.stats = torch.zeros(len(self.STATS), device=self.loss_device)
        self.stat_steps = 0
        self.timers = {"compute": 0.0, "allreduce_wait": 0.0}
        # bf16 autocast for the CUDA ops (CPU ops are untouched), wherever the blocks are placed
        self.amp = bool(cfg.amp) and any(p.is_cuda for p in (*G.parameters(), *D.parameters()))
        self.d_updates = 0
        self.bad_step = torch.zeros((), dtype=torch.float64, device=self.loss_device)  # first non-finite step

    def broadcast(self) -> None:
        """Make every rank start from rank 0's parameters, buffers and optimizer state."""
        # hvd: parameters and BatchNorm buffers from rank 0 ...
        self.hvd.broadcast_parameters(self.G.state_dict(), root_rank=0)
        self.hvd.broadcast_parameters(self.D.state_dict(), root_rank=0)
        # hvd: ... and both optimizers' state, when rank 0 has any (after a resume). A fresh Adam is
        # skipped: broadcast_optimizer_state would first take a zero-gradient step to create the state,
        # starting Adam's step counter at 1 and changing its first updates against plain PyTorch.
        for opt in (self.opt_g, self.opt_d):
            # (objects get explicit names: Horovod matches collectives across ranks by name, and the
            # default name is the object's type, which may differ between rank 0 and the others)
            if self.hvd.broadcast_object(len(opt.state_dict()["state"]) > 0, root_rank=0, name="hvdgan.has_state"):
                self.hvd.broadcast_optimizer_state(opt, root_rank=0)

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.G.nz, 1, 1, device=self.noise_device, generator=generator)

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()

    def step(self, real: torch.Tensor, z: torch.Tensor, step: int = 0) -> bool:
        """One D update on `real`; a G update too on every `d_steps`-th call (returns whether G stepped).
        `step` is the G step this belongs to, remembered if a loss is not finite (checked at log time,
        without a device sync here)."""
        cfg, t0 = self.cfg, time.perf_counter()
        # 1. fakes from noise
        with self.autocast():
            fake = self.G(z)
            # 2. D on real and (detached) fake images
            real_logits = self.D(real).float()
            fake_logits = self.D(fake.detach()).float()
            loss_d = d_loss(cfg.loss, real_logits, fake_logits)
        # 3. D's update: backward starts D's allreduces (hvd hooks), step() waits for them
        self.opt_d.zero_grad()  # (set_to_none, the torch default)
        loss_d.backward()
        t1 = time.perf_counter()
        if self.stop_flag is not None:
            self.stop_flag.submit()  # hvd: the stop flag (hvdgan/stop.py) rides in the cycle of D's gradients
        self.opt_d.step()  # hvd: synchronize D's gradients, then Adam
        t2 = time.perf_counter()
        self.d_updates += 1
        g_stepped = self.d_updates % cfg.d_steps == 0
        with torch.no_grad():
            stats = [loss_d.detach(), torch.zeros((), device=self.loss_device),
                     torch.sigmoid(real_logits).mean(), torch.sigmoid(fake_logits).mean(),
                     torch.zeros((), device=self.loss_device), torch.zeros((), device=self.loss_device)]
        t3 = t4 = t2
        if g_stepped:
            # 4. G's loss through D, D frozen: only G's gradients are computed and all-reduced
            with frozen(self.D), self.autocast():
                gen_logits = self.D(fake).float()
                loss_g = g_loss(cfg.loss, gen_logits)
            self.opt_g.zero_grad()  # (set_to_none, the torch default)
            loss_g.backward()
            t3 = time.perf_counter()
            # 5. G's update and its moving average
            self.opt_g.step()  # hvd: synchronize G's gradients, then Adam
            t4 = time.perf_counter()
            if self.ema is not None:
                self.ema.update_parameters(self.G)
            with torch.no_grad():
                stats[1] = loss_g.detach()
                stats[4] = torch.sigmoid(gen_logits).mean()
                stats[5] = torch.ones((), device=self.loss_device)
        with torch.no_grad():
            stats = torch.stack(stats)
            self.stats += stats
            bad = ~torch.isfinite(stats[:2]).all() & (self.bad_step == 0)
            self.bad_step.copy_(torch.where(bad, torch.full_like(self.bad_step, step), self.bad_step))
        self.stat_steps += 1
        self.timers["compute"] += (t1 - t0) + (t3 - t2) + (time.perf_counter() - t4)
        self.timers["allreduce_wait"] += (t2 - t1) + (t4 - t3)
        return g_stepped

    def pop_bad_step(self) -> float:
        """The first step whose loss was NaN or infinite since the last call (0: none)."""
        value = self.bad_step.item()
        self.bad_step.zero_()
        return value

    def state_dict(self) -> dict:
        return {"G": self.G.state_dict(), "D": self.D.state_dict(),
                "G_ema": self.ema.state_dict() if self.ema is not None else None,
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        for opt, key, lr in ((self.opt_g, "opt_g", self.lr_g), (self.opt_d, "opt_d", self.lr_d)):
            opt.load_state_dict(state[key])
            for group in opt.param_groups:  # the configuration, not the checkpoint, sets the learning rate
                group["lr"] = lr
        if self.ema is not None:
            if state.get("G_ema") is not None:
                self.ema.load_state_dict(state["G_ema"])
            else:  # a checkpoint without EMA: start the average from the loaded G
                self.ema.module.load_state_dict(self.G.state_dict())

    def sample_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.G

    def pop_stats(self, reset: bool = True) -> tuple[torch.Tensor, int, dict]:
        """The summed stats since the last reset, how many steps they cover, and the timers."""
        stats, n, timers = self.stats.clone(), self.stat_steps, dict(self.timers)
        if reset:
            self.stats.zero_()
            self.stat_steps = 0
            self.timers = {k: 0.0 for k in self.timers}
        return stats, n, timers
