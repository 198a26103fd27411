"""The GAN step: the seed's five steps, data-parallel with Horovod.

    1. G makes a batch of fakes from noise (and the batch's class labels, when conditional)
    2. D scores real and fake images (the fakes detached: G's gradients are not computed), both
       through DiffAugment when --augment is set; every --r1-every steps plus R1 on the reals
    3. D's update: backward all-reduces D's gradients (Horovod hooks), step() waits for them
    4. G's loss through D, with D frozen, so that only G's hooks fire (hvd#796, #2559); with
       --mode-seeking plus MSGAN's term
    5. G's update, then G's moving average (EMA) for samples

The Horovod lines are marked `# hvd:`. Everything else is plain PyTorch.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .dist import layout
from .models.augment import DiffAugment
from .config import GANSettings
from .run.stats import Stats, Stopwatch


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


def r1_penalty(real_logits: torch.Tensor, real_in: torch.Tensor) -> torch.Tensor:
    """Mean squared norm of D's gradient at the real images (Mescheder et al. 2018). autograd.grad
    with `inputs` only runs no AccumulateGrad node, so no Horovod hook fires here: D's gradients
    (penalty included) are all-reduced once, by loss_d.backward()."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_in, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def mode_seeking(fake: torch.Tensor, z: torch.Tensor, y: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """MSGAN's term (Mao et al. 2019): 1 / (eps + r), r the mean over pairs of fakes of one class of their
    images' mean absolute difference over their noises'. A G that ignores z within a class has r near 0 and
    a large term. Over every such pair of the batch (masks, not indexing: no device sync); 0 without one."""
    x, n = fake.float().flatten(1), z.to(fake.device).float().flatten(1)
    ratio = (torch.cdist(x, x, p=1) / x.shape[1]) / (torch.cdist(n, n, p=1) / n.shape[1]).clamp_min(eps)
    pairs = torch.ones_like(ratio, dtype=torch.bool).triu(1)
    if y is not None:
        y = y.to(fake.device)
        pairs = pairs & (y[:, None] == y[None, :])
    count = pairs.sum()
    r = torch.where(pairs, ratio, 0).sum() / count.clamp_min(1)
    return torch.where(count > 0, 1 / (r + eps), 0)


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


class EMA(AveragedModel):
    """G's exponential moving average, with a decay that ramps up as min(decay, (1 + n) / (10 + n)):
    early on the average follows G closely instead of dragging its random initial weights along for
    ~1/(1 - decay) steps (as TensorFlow's ExponentialMovingAverage with num_updates).

    AveragedModel's own update moves its counter to each device group every step, and the decay ramp
    read it back: both wait for the GPU, which a small-batch GPU step cannot afford. Here the counter stays a CPU tensor
    (AveragedModel's, so checkpoints keep its layout), the decay is worked out on the host, and each
    (device, dtype) group is one foreach lerp: no sync."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__(model, use_buffers=True)  # (n_averaged: a CPU buffer)
        self.decay = decay

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        n = int(self.n_averaged)  # a CPU tensor: no device sync
        weight = 1.0 if n == 0 else 1 - min(self.decay, (1 + n) / (10 + n))  # 1: start as a copy of G
        groups: dict = {}
        mine = [*self.module.parameters(), *self.module.buffers()]
        theirs = [*model.parameters(), *model.buffers()]
        for e, m in zip(mine, theirs, strict=True):
            if e.is_floating_point():
                group = groups.setdefault((e.device, e.dtype), ([], []))
                group[0].append(e.detach())
                group[1].append(m.detach().to(e.device))
            else:  # counters such as BatchNorm's num_batches_tracked
                e.copy_(m)
        for ema_tensors, model_tensors in groups.values():
            torch._foreach_lerp_(ema_tensors, model_tensors, weight)
        self.n_averaged += 1


def first_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def last_device(model: nn.Module) -> torch.device:
    return list(model.parameters())[-1].device


def adam_kernel(model: nn.Module) -> dict:
    """Adam's implementation for a network: the fused kernel when all of it is on GPUs; elsewhere the
    foreach one, which on the CPU gives bitwise the for-loop's (torch's CPU default) results in fewer,
    larger ops (tests/test_gan.py). (The CPU's fused kernel is faster still, but not bitwise the for-loop.)"""
    return {"fused": True} if all(p.is_cuda for p in model.parameters()) else {"foreach": True}


# ------------------------------------------------------------------------------------------ the GAN
class GAN:
    """G, D, their Horovod optimizers and G's EMA; `step(real)` is one iteration of the loop."""

    # the statistics of a log window (summed on the loss device; averaged over ranks at log time)
    LOSSES = ("loss_d", "d_real", "d_fake", "loss_g", "d_fake_after")  # averaged over ranks and steps in the log
    TIMES = ("time_compute", "time_allreduce_wait")  # seconds per step, averaged over ranks

    def __init__(self, G: nn.Module, D: nn.Module, settings: GANSettings, hvd, stop_flag=None,
                 rng: torch.Generator | None = None):
        """`stop_flag`: hvdgan.dist.stop.StopFlag, submitted with D's gradients every D update (None: none).
        `rng`: the generator of DiffAugment's draws (the rank's noise stream, saved with checkpoints)."""
        self.G, self.D, self.settings, self.hvd = G, D, settings, hvd
        if settings.sync_bn:  # hvd: BatchNorm statistics over all ranks
            from .models import syncbn

            counter = [0]
            syncbn.convert(G, counter)
            syncbn.convert(D, counter)
        opt_g = torch.optim.Adam(G.parameters(), lr=settings.lr_g, betas=settings.betas, **adam_kernel(G))
        opt_d = torch.optim.Adam(D.parameters(), lr=settings.lr_d, betas=settings.betas, **adam_kernel(D))
        compression = hvd.Compression.fp16 if settings.fp16_allreduce else hvd.Compression.none
        compression = layout.Contiguous(compression)  # channels_last gradients go as contiguous copies
        # hvd: both optimizers all-reduce their gradients; distinct name prefixes keep G's and D's apart
        self.opt_g = hvd.DistributedOptimizer(opt_g, named_parameters=[("G." + n, p) for n, p in G.named_parameters()],
                                              compression=compression)
        self.opt_d = hvd.DistributedOptimizer(opt_d, named_parameters=[("D." + n, p) for n, p in D.named_parameters()],
                                              compression=compression)
        self.ema = None  # (made from G once every rank holds rank 0's G: nothing of it to broadcast now)
        self.broadcast()
        self.ema = EMA(G, settings.ema) if settings.ema > 0 else None
        self.noise_device = first_device(G)
        self.stop_flag = stop_flag
        self.real_device = first_device(D)
        self.loss_device = last_device(D)
        self.stats = Stats(self.LOSSES + self.TIMES, self.loss_device)
        self.d_updates = 0
        self.augment = DiffAugment(settings.augment)  # the identity without --augment
        self.rng = rng
        self.bad_step = torch.zeros((), dtype=torch.float64, device=self.loss_device)  # first non-finite step

    def broadcast(self) -> None:
        """Make every rank start from rank 0's parameters, buffers and optimizer state."""
        # hvd: parameters and BatchNorm buffers from rank 0 ...
        # (layout.*: Horovod takes contiguous tensors only; channels_last weights go as contiguous copies)
        layout.broadcast_parameters(self.hvd, self.G.state_dict(), root_rank=0)
        layout.broadcast_parameters(self.hvd, self.D.state_dict(), root_rank=0)
        # hvd: ... and both optimizers' state, when rank 0 has any (after a resume). A fresh Adam is
        # skipped: broadcast_optimizer_state would first take a zero-gradient step to create the state,
        # starting Adam's step counter at 1 and changing its first updates against plain PyTorch.
        if self.settings.ema_shared and self.ema is not None:  # (elastic: every rank keeps rank 0's average)
            layout.broadcast_parameters(self.hvd, self.ema.state_dict(), root_rank=0)
        for opt in (self.opt_g, self.opt_d):
            # (objects get explicit names: Horovod matches collectives across ranks by name, and the
            # default name is the object's type, which may differ between rank 0 and the others)
            if self.hvd.broadcast_object(len(opt.state_dict()["state"]) > 0, root_rank=0, name="hvdgan.has_state"):
                layout.broadcast_optimizer_state(self.hvd, opt, root_rank=0)

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.G.nz, 1, 1, device=self.noise_device, generator=generator)

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.settings.amp else contextlib.nullcontext()

    def step(self, real: torch.Tensor, z: torch.Tensor, step: int = 0, y: torch.Tensor | None = None) -> bool:
        """One D update on `real`; a G update too on every `d_steps`-th call (returns whether G stepped).
        `step` is the G step this belongs to, remembered if a loss is not finite (checked at log time,
        without a device sync here). `y`: the batch's class labels (conditional); the fakes take them."""
        settings, stats, watch = self.settings, self.stats, Stopwatch()
        cond, aug = (() if y is None else (y,)), (lambda x: self.augment(x, self.rng))
        r1_due = settings.r1 > 0 and self.d_updates % settings.r1_every == 0
        # 1. fakes from noise
        with self.autocast():
            fake = self.G(z, *cond)
            # 2. D on real and (detached) fake images
            real_in = aug(real).detach().requires_grad_(True) if r1_due else aug(real)
            real_logits = self.D(real_in, *cond).float()
            fake_logits = self.D(aug(fake.detach()), *cond).float()
            loss_d = d_loss(settings.loss, real_logits, fake_logits)
            if r1_due:  # lazy R1: every r1_every steps, scaled by r1_every
                loss_d = loss_d + settings.r1 / 2 * settings.r1_every * r1_penalty(real_logits, real_in)
        # 3. D's update: backward starts D's allreduces (hvd hooks), step() waits for them
        self.opt_d.zero_grad()  # (set_to_none, the torch default)
        loss_d.backward()
        with watch.waiting():
            if self.stop_flag is not None:
                self.stop_flag.submit()  # hvd: the stop flag (hvdgan/dist/stop.py) rides in the cycle of D's gradients
            self.opt_d.step()  # hvd: synchronize D's gradients, then Adam
        self.d_updates += 1
        g_stepped = self.d_updates % settings.d_steps == 0
        with torch.no_grad():
            stats.add("loss_d", loss_d)
            stats.add("d_real", torch.sigmoid(real_logits).mean())
            stats.add("d_fake", torch.sigmoid(fake_logits).mean())
            losses = [loss_d]
        if g_stepped:
            # 4. G's loss through D, D frozen: only G's gradients are computed and all-reduced
            with frozen(self.D), self.autocast():
                gen_logits = self.D(aug(fake), *cond).float()
                loss_g = g_loss(settings.loss, gen_logits)
                if settings.mode_seeking:  # G's noise must matter within a class
                    loss_g = loss_g + settings.mode_seeking * mode_seeking(fake, z, *cond)
            self.opt_g.zero_grad()  # (set_to_none, the torch default)
            loss_g.backward()
            # 5. G's update and its moving average
            with watch.waiting():
                self.opt_g.step()  # hvd: synchronize G's gradients, then Adam
            if self.ema is not None:
                self.ema.update_parameters(self.G)
            with torch.no_grad():
                stats.add("loss_g", loss_g)
                stats.add("d_fake_after", torch.sigmoid(gen_logits).mean())
                losses.append(loss_g)
        with torch.no_grad():  # remember the first step whose loss is not finite (no device sync here)
            bad = ~torch.isfinite(torch.stack(losses)).all() & (self.bad_step == 0)
            self.bad_step.copy_(torch.where(bad, torch.full_like(self.bad_step, step), self.bad_step))
        watch.report(stats, compute="time_compute", waiting="time_allreduce_wait")
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
        for opt, key, lr in ((self.opt_g, "opt_g", self.settings.lr_g), (self.opt_d, "opt_d", self.settings.lr_d)):
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
