"""Run configuration: what the user asks for, then what the run uses.

`TrainConfig` holds the options, loaded from job files (YAML), HVDGAN_* variables and options.
Precedence, lowest first: the defaults below, the job file (`--job`), HVDGAN_TRAIN_* environment
variables, command-line options (Click's default_map and auto_envvar_prefix do the layering); `build`
makes and checks one, for the command line and for tests alike.

`resolve(cfg, world, data)` then decides, once and before training starts, everything that depends on
the devices, the data and the world: the networks' devices, precision (bf16 autocast, channels_last),
threads, the image size, the learning rates scaled with the world size, and the number of steps. The
result, `Resolved`, is frozen; each part of the run receives what it uses (`GANSettings` for the GAN).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from .dist.world import World
from .errors import HvdganError

CHOICES = {
    "model": ("dcgan", "resnet"),
    "loss": ("bce", "hinge"),
    "lr_scaling": ("none", "linear", "sqrt"),
    "device": ("auto", "cpu", "cuda"),
}


@dataclass(frozen=True)
class TrainConfig:
    # data and output
    data: str = ""  # dataset directory written by `hvdgan prepare`
    out: str = "runs/hvdgan"  # run directory: config, metrics, samples, checkpoints
    in_memory: bool = True  # hold this rank's shards in memory when they fit
    # model
    model: str = "dcgan"
    image_size: int | None = None  # None: take it from the data (32 or 64)
    nz: int = 100
    ngf: int = 64
    ndf: int = 64
    spectral_norm: bool = False
    conditional: bool = False  # class-conditional G and D, labels from the dataset
    augment: str = ""  # DiffAugment policy for D's inputs: e.g. "translation,cutout,color"
    r1: float = 0.0  # R1 penalty weight (gamma) on real images; 0: off
    r1_every: int = 16  # lazy R1: every N discriminator steps
    # optimisation (the seed: Adam, lr 2e-4, betas 0.5/0.999, BCE)
    loss: str | None = None  # None: hinge for resnet, bce (the seed's) for dcgan
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lr_scaling: str = "none"  # scale lr with the world size: none, linear or sqrt
    d_steps: int = 1  # discriminator steps per generator step
    ema: float = 0.999  # decay of G's exponential moving average (0 turns it off)
    batch_size: int = 64  # per rank
    epochs: int = 5
    max_steps: int | None = None  # stop after this many generator steps (overrides epochs)
    seed: int = 0
    # Horovod
    fp16_allreduce: bool = False
    sync_bn: bool = False
    # devices
    device: str = "auto"
    placement: str | None = None  # e.g. "G=gpu0,D=cpu" or "G=gpu0,D.trunk=gpu1,D.head=cpu"
    threads: int | None = None  # torch intra-op threads per rank (default: hvdgan.dist.resources.default_threads)
    amp: bool | None = None  # bf16 autocast (default: on for CUDA)
    channels_last: bool | None = None  # default: on for CUDA
    # observability and checkpoints
    log_every: int = 10
    sample_every: int = 200
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    resume: str = "none"  # none, auto (newest checkpoint in out/checkpoints) or a path
    tensorboard: bool = True  # write TensorBoard events when tensorboard is installed
    # evaluation with Inception features (hvdgan/eval/evaluate.py, docs/evaluation.md)
    eval_every: int = 0  # 0: off
    eval_num: int = 10_000  # generated images per evaluation
    eval_real_num: int | None = None  # reference images; None: the whole dataset
    eval_metrics: str = "fid"  # comma-separated: fid, kid, pr
    inception: str | None = None  # weights file; None: $HVDGAN_INCEPTION or the set-up's cache

    def validate(self, source="options") -> "TrainConfig":
        """Check every value; `source` is a string or a function key -> where the value came from
        (an option, an environment variable or a job file), named in the error."""
        where = source if callable(source) else (lambda key: f"{source}: {key}")

        def bad(key: str, why: str):
            raise HvdganError(f"{where(key)}: {why}")

        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed and not (key == "loss" and self.loss is None):
                bad(key, f"{getattr(self, key)!r} is not one of {', '.join(allowed)}")
        for key in ("nz", "ngf", "ndf", "d_steps", "batch_size", "log_every", "sample_every",
                    "checkpoint_every", "keep_checkpoints", "r1_every"):
            if getattr(self, key) < 1:
                bad(key, f"must be >= 1, got {getattr(self, key)}")
        if self.epochs < 0:
            bad("epochs", f"must be >= 0, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 0:
            bad("max_steps", f"must be >= 0, got {self.max_steps}")
        if self.image_size is not None and self.image_size not in (32, 64):
            bad("image_size", f"DCGAN takes 32 or 64, got {self.image_size}")
        for key in ("lr_g", "lr_d"):
            if not getattr(self, key) > 0:
                bad(key, f"must be > 0, got {getattr(self, key)}")
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                bad(key, f"must be in [0, 1), got {getattr(self, key)}")
        if not self.r1 >= 0:
            bad("r1", f"must be >= 0, got {self.r1}")
        from .models.augment import parse_policy

        try:
            parse_policy(self.augment)
        except HvdganError as exc:
            bad("augment", exc.message.split(": ", 1)[-1])
        if not 0 <= self.ema < 1:
            bad("ema", f"must be in [0, 1), got {self.ema}")
        if self.threads is not None and self.threads < 1:
            bad("threads", f"must be >= 1, got {self.threads}")
        if self.eval_every < 0:
            bad("eval_every", f"must be >= 0 (0: off), got {self.eval_every}")
        for key in ("eval_num", "eval_real_num"):
            if getattr(self, key) is not None and getattr(self, key) < 2:
                bad(key, f"must be >= 2, got {getattr(self, key)}")
        from .eval.scores import parse_metrics

        try:
            parse_metrics(self.eval_metrics)
        except ValueError as exc:
            bad("eval_metrics", str(exc).split(": ", 1)[-1])
        if self.placement:
            from .models.placement import Placement

            try:
                Placement.parse(self.placement)
            except HvdganError as exc:
                bad("placement", exc.message.split(": ", 1)[-1])
        if not self.data:
            bad("data", "no dataset directory given (--data DIR, or `data:` in the job file)")
        return self



FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}

HELP = {
    "data": "Dataset directory written by `hvdgan prepare`.",
    "out": "Run directory: config, metrics.jsonl, samples/, checkpoints/, losses.png.",
    "in_memory": "Hold this rank's shards in memory (else read slices from the HDF5 files).",
    "model": "Network family: dcgan (the seed's) or resnet (SNGAN/BigGAN-style residual G and D, spectral "
             "norm in D).",
    "image_size": "Image size the model is built for (default: the data's; 32 or 64).",
    "nz": "Length of the noise vector z.",
    "ngf": "Generator width (channels of its last hidden layer).",
    "ndf": "Discriminator width (channels of its first layer).",
    "spectral_norm": "Spectral normalisation in D (replaces D's BatchNorm; resnet's D always has it).",
    "conditional": "Class-conditional training: conditional BatchNorm in G, a projection discriminator; labels "
                   "from the dataset.",
    "augment": "DiffAugment policy for D's real and fake inputs: comma-separated translation, cutout, color.",
    "r1": "R1 gradient penalty weight (gamma) on real images (0: off).",
    "r1_every": "Lazy R1: apply the penalty every N discriminator steps (scaled by N).",
    "loss": "bce: the seed's BCE with the non-saturating G loss (on logits); hinge: hinge loss "
            "(default: hinge for resnet, bce for dcgan).",
    "lr_g": "Generator learning rate (Adam).",
    "lr_d": "Discriminator learning rate (Adam).",
    "beta1": "Adam beta1.",
    "beta2": "Adam beta2.",
    "lr_scaling": "Scale both learning rates with the number of ranks: none, linear or sqrt.",
    "d_steps": "Discriminator updates per generator update (each on its own batch).",
    "ema": "Decay of the moving average of G's weights used for samples (0: off).",
    "batch_size": "Images per rank per step.",
    "epochs": "Epochs to train (ignored when --max-steps is given).",
    "max_steps": "Generator steps to train.",
    "seed": "Seed shared by all ranks (data order, initial weights); noise differs per rank.",
    "fp16_allreduce": "Compress gradients to fp16 for the allreduce (half the bytes).",
    "sync_bn": "Horovod SyncBatchNorm: BatchNorm statistics over all ranks.",
    "device": "Default device of the networks: auto (cuda:local_rank if there is a GPU), cpu or cuda.",
    "placement": "Where G, D or their blocks live, e.g. G=gpu0,D=cpu (see docs/placement.md).",
    "threads": "Torch threads per rank (default: OMP_NUM_THREADS, else this rank's share of its allowed CPUs).",
    "amp": "bf16 autocast (default: on when a network is on a GPU).",
    "channels_last": "channels_last memory format (default: on when a network is on a GPU).",
    "log_every": "Log (and check for NaN and preemption) every N steps.",
    "sample_every": "Write a sample grid and the 8x8 Frechet distance every N steps.",
    "checkpoint_every": "Write a checkpoint every N steps.",
    "keep_checkpoints": "Keep the newest N checkpoints.",
    "resume": "none, auto (newest checkpoint in OUT/checkpoints) or a checkpoint path.",
    "tensorboard": "Write TensorBoard events to OUT/tensorboard when tensorboard is installed.",
    "eval_every": "Inception FID (and --eval-metrics) of G's EMA every N steps and at the end; the best "
                  "FID's checkpoint is kept as checkpoints/ckpt-best.pt (0: off).",
    "eval_num": "Generated images per evaluation (shared among the ranks).",
    "eval_real_num": "Reference images from --data (default: all; features cached in DATA/eval-cache).",
    "eval_metrics": "Metrics of each evaluation, comma-separated: fid, kid, pr (precision/recall).",
    "inception": "Inception weights file (default: $HVDGAN_INCEPTION, else the one scripts/setup.sh fetched).",
}


def load_job_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML job file into {field: value}; an unknown key or a value of the wrong type is an
    error naming the key and the file. Relative paths in `data` and `out` stay relative to the
    working directory, as on the command line."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise HvdganError(f"{path}: job file not found") from None
    except yaml.YAMLError as exc:
        raise HvdganError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise HvdganError(f"{path}: a job file is a mapping of option: value, got {type(raw).__name__}")
    values = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS:
            close = [f for f in FIELDS if f.startswith(name[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise HvdganError(f"{path}: unknown key {key!r}{hint}")
        values[name] = _check_type(path, key, FIELDS[name], value)
    return values


def _check_type(path: Path, key: str, f: dataclasses.Field, value: Any) -> Any:
    kind = str(f.type)
    if value is None:
        if "None" in kind:
            return None
        raise HvdganError(f"{path}: {key}: may not be empty")
    if kind.startswith("bool"):
        ok = isinstance(value, bool)
    elif kind.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind.startswith("float"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise HvdganError(f"{path}: {key}: expected {kind.split(' |')[0]}, got {value!r}")
    return value


def build(values: dict[str, Any], where="options") -> TrainConfig:
    """The one way to make a TrainConfig (the command line's, and the tests'): `values` over the
    defaults (None: not given, the default stays), checked. `where` is a string or a function
    key -> where the value came from (an option, an environment variable or a job file), named in errors."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        name = where if isinstance(where, str) else "options"
        raise HvdganError(f"{name}: unknown key(s) {', '.join(unknown)}")
    return TrainConfig(**{k: v for k, v in values.items() if v is not None}).validate(where)


# ------------------------------------------------------------------------------------ resolution
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
    fp16_allreduce: bool = False
    sync_bn: bool = False
    amp: bool = False  # bf16 autocast of the CUDA ops (CPU ops are untouched)
    augment: str = ""  # DiffAugment policy for D's inputs ("": none)
    r1: float = 0.0  # R1 penalty weight on real images (0: off)
    r1_every: int = 16  # lazy R1: every N discriminator steps


@dataclass(frozen=True, kw_only=True)
class Resolved(TrainConfig):
    """The configuration a run uses: the options with the defaults that depend on the devices, the data
    and the world filled in (image_size, threads, amp, channels_last), and what follows from them."""

    world: World
    channels: int
    batches_per_epoch: int
    total_steps: int
    devices: Mapping[str, Mapping[str, Any]]  # {"G": {block: torch.device}, "D": {...}}
    gan: GANSettings

    @property
    def on_cuda(self) -> bool:
        return any(d.type == "cuda" for blocks in self.devices.values() for d in blocks.values())

    def to_dict(self) -> dict[str, Any]:
        """For config.json and checkpoints: the options as used, the world, the devices, the steps."""
        from .models.placement import describe

        return {**{name: getattr(self, name) for name in FIELDS}, "world_size": self.world.size,
                "devices": describe(self.devices), "channels": self.channels,
                "batches_per_epoch": self.batches_per_epoch, "total_steps": self.total_steps,
                "gan": dataclasses.asdict(self.gan)}


LR_SCALE = {"none": lambda n: 1.0, "linear": float, "sqrt": math.sqrt}


def resolve(cfg: TrainConfig, world: World, data: DataFacts) -> Resolved:
    """Decide everything that depends on this rank's devices, the data and the world, once."""
    from .models.placement import Placement, block_devices, default_device

    if cfg.image_size and cfg.image_size != data.image_size:
        raise HvdganError(f"--image-size {cfg.image_size} but {cfg.data} holds {data.image_size}x{data.image_size} "
                          f"images (re-prepare it with --size {cfg.image_size})")
    default = default_device(cfg.device, world.local_rank)
    devices = block_devices(Placement.parse(cfg.placement), world.local_rank, world.local_size, default)
    on_cuda = any(d.type == "cuda" for blocks in devices.values() for d in blocks.values())
    amp = on_cuda and cfg.amp is not False  # autocast("cuda") changes CUDA ops only
    scale = LR_SCALE[cfg.lr_scaling](world.size)
    loss = cfg.loss or ("hinge" if cfg.model == "resnet" else "bce")  # the family's usual loss
    gan = GANSettings(loss=loss, lr_g=cfg.lr_g * scale, lr_d=cfg.lr_d * scale, betas=(cfg.beta1, cfg.beta2),
                      d_steps=cfg.d_steps, ema=cfg.ema if world.rank == 0 else 0.0,  # rank 0 samples and saves it
                      fp16_allreduce=cfg.fp16_allreduce, sync_bn=cfg.sync_bn, amp=amp,
                      augment=cfg.augment, r1=cfg.r1, r1_every=cfg.r1_every)
    options = dataclasses.asdict(cfg)
    options.update(image_size=data.image_size, amp=amp, loss=loss,
                   channels_last=on_cuda if cfg.channels_last is None else cfg.channels_last,
                   threads=cfg.threads or world.cpu_threads)
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * data.batches_per_epoch // cfg.d_steps
    return Resolved(**options, world=world, channels=data.channels, batches_per_epoch=data.batches_per_epoch,
                    total_steps=total, devices=devices, gan=gan)
