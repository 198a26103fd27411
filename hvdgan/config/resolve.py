"""`resolve(options, world, data)` decides, once and before training starts, everything that depends on
the devices, the data and the world: the networks' devices, precision (bf16 autocast, channels_last),
threads, the image size, the learning rates scaled with the world size, and the number of steps. The
result, `Resolved`, is frozen and holds parsed values (the placement's devices, the augmentation policy,
the metrics), never strings to parse again; each part of the run reads its own section of the options
and what was resolved for it (`GANSettings` for the GAN step)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..dist.world import World
from ..errors import HvdganError
from .options import (DatasetOptions, DistributionOptions, EvaluationOptions, NetworkOptions, OptimOptions,
                      OutputOptions, RegularisationOptions, ScheduleOptions, TrainConfig)


@dataclass(frozen=True)
class DataFacts:
    """What the run needs to know of its dataset (the reader checked it: square, 32 or 64, >= 1 batch)."""

    channels: int
    image_size: int
    batches_per_epoch: int  # per rank, for this world and batch size


@dataclass(frozen=True)
class GANSettings:
    """What hvdgan.gan.GAN uses: losses, optimizers, Horovod options, G's EMA and precision."""

    loss: str = "bce"
    lr_g: float = 2e-4  # scaled with the world size (--lr-scaling)
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    d_steps: int = 1
    ema: float = 0.999  # decay of G's moving average; 0: none on this rank
    ema_shared: bool = False  # every rank keeps the average (elastic: any rank may become rank 0)
    fp16_allreduce: bool = False
    sync_bn: bool = False
    amp: bool = False  # bf16 autocast of the CUDA ops (CPU ops are untouched)
    augment: tuple[str, ...] = ()  # DiffAugment's operations for D's inputs (none: the identity)
    r1: float = 0.0  # R1 penalty weight on real images (0: off)
    r1_every: int = 16  # lazy R1: every N discriminator steps
    mode_seeking: float = 0.0  # MSGAN's term's weight in G's loss (0: off)


@dataclass(frozen=True)
class Resolved:
    """The configuration a run uses: the options as given (`options`, and each section by its name) and
    what was decided from them, the devices, the data and the world."""

    options: TrainConfig
    world: World
    image_size: int  # the data's
    channels: int
    threads: int
    channels_last: bool
    devices: Mapping[str, Mapping[str, Any]]  # {"G": {block: torch.device}, "D": {...}}
    on_cuda: bool  # a network (block) is on a GPU
    lr_scale: float  # both learning rates' factor for this world size (--lr-scaling)
    batches_per_epoch: int
    total_steps: int
    eval_metrics: tuple[str, ...]
    gan: GANSettings

    dataset = property(lambda self: self.options.dataset, doc=DatasetOptions.__doc__)
    network = property(lambda self: self.options.network, doc=NetworkOptions.__doc__)
    regularisation = property(lambda self: self.options.regularisation, doc=RegularisationOptions.__doc__)
    optim = property(lambda self: self.options.optim, doc=OptimOptions.__doc__)
    schedule = property(lambda self: self.options.schedule, doc=ScheduleOptions.__doc__)
    distribution = property(lambda self: self.options.distribution, doc=DistributionOptions.__doc__)
    output = property(lambda self: self.options.output, doc=OutputOptions.__doc__)
    evaluation = property(lambda self: self.options.evaluation, doc=EvaluationOptions.__doc__)

    def to_dict(self) -> dict[str, Any]:
        """For config.json and checkpoints: every option once (with the value the run uses where it was
        resolved: image_size, amp, loss, channels_last, threads), and the world, the devices, the steps."""
        from ..models.placement import describe

        return {**self.options.flat(), "image_size": self.image_size, "amp": self.gan.amp, "loss": self.gan.loss,
                "channels_last": self.channels_last, "threads": self.threads, "world_size": self.world.size,
                "devices": describe(self.devices), "channels": self.channels, "lr_scale": self.lr_scale,
                "batches_per_epoch": self.batches_per_epoch, "total_steps": self.total_steps}


LR_SCALE = {"none": lambda n: 1.0, "linear": float, "sqrt": math.sqrt}


def resolve(options: TrainConfig, world: World, data: DataFacts) -> Resolved:
    """Decide everything that depends on this rank's devices, the data and the world, once."""
    from ..eval import parse_metrics
    from ..models import parse_policy
    from ..models.placement import Placement, block_devices, default_device

    net, optim, dist = options.network, options.optim, options.distribution
    if net.image_size and net.image_size != data.image_size:
        raise HvdganError(f"--image-size {net.image_size} but {options.dataset.data} holds "
                          f"{data.image_size}x{data.image_size} images (re-prepare it with --size {net.image_size})")
    default = default_device(dist.device, world.local_rank)
    devices = block_devices(Placement.parse(dist.placement), world.local_rank, world.local_size, default)
    on_cuda = any(d.type == "cuda" for blocks in devices.values() for d in blocks.values())
    amp = on_cuda and dist.amp is not False  # autocast("cuda") changes CUDA ops only
    scale = LR_SCALE[optim.lr_scaling](world.size)
    reg = options.regularisation
    # G's EMA: rank 0 samples and saves it; in an elastic run any rank may become rank 0, so every rank keeps it
    ema = optim.ema if world.rank == 0 or dist.elastic else 0.0
    gan = GANSettings(loss=optim.loss or ("hinge" if net.model == "resnet" else "bce"),  # the family's usual loss
                      lr_g=optim.lr_g * scale, lr_d=optim.lr_d * scale, betas=(optim.beta1, optim.beta2),
                      d_steps=optim.d_steps, ema=ema, ema_shared=dist.elastic,
                      fp16_allreduce=dist.fp16_allreduce, sync_bn=dist.sync_bn, amp=amp,
                      augment=parse_policy(reg.augment), r1=reg.r1, r1_every=reg.r1_every,
                      mode_seeking=reg.mode_seeking)
    schedule = options.schedule
    total = (schedule.max_steps if schedule.max_steps is not None
             else schedule.epochs * data.batches_per_epoch // optim.d_steps)
    if total < 1:
        raise HvdganError(f"--epochs {schedule.epochs}: no generator step to train ({data.batches_per_epoch} batches "
                          f"an epoch, {optim.d_steps} a step); give more --epochs, or --max-steps")
    return Resolved(options=options, world=world, image_size=data.image_size, channels=data.channels,
                    threads=dist.threads or world.cpu_threads,
                    channels_last=on_cuda if dist.channels_last is None else dist.channels_last,
                    devices=devices, on_cuda=on_cuda, lr_scale=scale, batches_per_epoch=data.batches_per_epoch,
                    total_steps=total, eval_metrics=parse_metrics(options.evaluation.eval_metrics), gan=gan)
