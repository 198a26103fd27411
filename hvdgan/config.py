"""Run configuration: one dataclass, loaded from job files (YAML), HVDGAN_* variables and options.

Precedence, lowest first: the defaults below, the job file (`--job`), HVDGAN_TRAIN_* environment
variables, command-line options (Click's default_map and auto_envvar_prefix do the layering).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import HvdganError

CHOICES = {
    "model": ("dcgan", "resnet"),
    "loss": ("bce", "hinge"),
    "lr_scaling": ("none", "linear", "sqrt"),
    "device": ("auto", "cpu", "cuda"),
}


@dataclass
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
    conditional: bool = False  # class-conditional G and D (resnet), labels from the dataset
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
    threads: int | None = None  # torch intra-op threads per rank (default: cores / local ranks)
    amp: bool | None = None  # bf16 autocast (default: on for CUDA)
    channels_last: bool | None = None  # default: on for CUDA
    # observability and checkpoints
    log_every: int = 10
    sample_every: int = 200
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    resume: str = "none"  # none, auto (newest checkpoint in out/checkpoints) or a path
    tensorboard: bool = True  # write TensorBoard events when tensorboard is installed

    def validate(self, source="options") -> "TrainConfig":
        """Check every value; `source` is a string or a function key -> where the value came from
        (an option, an environment variable or a job file), named in the error."""
        where = source if callable(source) else (lambda key: f"{source}: {key}")

        def bad(key: str, why: str):
            raise HvdganError(f"{where(key)}: {why}")

        if self.loss is None:  # the family's usual loss
            self.loss = "hinge" if self.model == "resnet" else "bce"
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
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
        if self.conditional and self.model != "resnet":
            bad("conditional", "needs --model resnet (conditional BatchNorm and a projection discriminator)")
        if not self.r1 >= 0:
            bad("r1", f"must be >= 0, got {self.r1}")
        from .augment import parse_policy

        try:
            parse_policy(self.augment)
        except HvdganError as exc:
            bad("augment", exc.message.split(": ", 1)[-1])
        if not 0 <= self.ema < 1:
            bad("ema", f"must be in [0, 1), got {self.ema}")
        if self.threads is not None and self.threads < 1:
            bad("threads", f"must be >= 1, got {self.threads}")
        if self.placement:
            from .placement import Placement

            try:
                Placement.parse(self.placement)
            except HvdganError as exc:
                bad("placement", exc.message.split(": ", 1)[-1])
        if not self.data:
            bad("data", "no dataset directory given (--data DIR, or `data:` in the job file)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


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
    "conditional": "Class-conditional training (resnet): conditional BatchNorm in G, projection D; labels "
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
    "threads": "Torch threads per rank (default: cores / ranks on the node).",
    "amp": "bf16 autocast (default: on when a network is on a GPU).",
    "channels_last": "channels_last memory format (default: on when a network is on a GPU).",
    "log_every": "Log (and check for NaN and preemption) every N steps.",
    "sample_every": "Write a sample grid and the 8x8 Frechet distance every N steps.",
    "checkpoint_every": "Write a checkpoint every N steps.",
    "keep_checkpoints": "Keep the newest N checkpoints.",
    "resume": "none, auto (newest checkpoint in OUT/checkpoints) or a checkpoint path.",
    "tensorboard": "Write TensorBoard events to OUT/tensorboard when tensorboard is installed.",
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


def from_values(values: dict[str, Any], source: str = "options") -> TrainConfig:
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise HvdganError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}")
    return TrainConfig(**values).validate(source)
