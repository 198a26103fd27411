"""The options of `hvdgan train`, in sections. Each field says, where it is declared, its type, default,
help text, allowed values and check; the command-line options, the job-file keys and the HVDGAN_TRAIN_*
variables are made from these declarations (hvdgan.cli, hvdgan.config.sources), and each part of the
run reads its own section. Option names are unique across sections: a job file and the command line
name them flat (`lr_g`, `--lr-g`)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import HvdganError
from ..models import MODELS, SIZES

Check = Callable[[Any], "str | None"]  # value -> why it is wrong, or None


def option(default: Any, help: str, *, choices: tuple | None = None, check: Check | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices, "check": check})


def at_least(n: float) -> Check:
    def check(v):
        if v is None or n <= v < math.inf:  # (NaN fails both comparisons)
            return None
        return f"must be >= {n}{' and finite' if v == math.inf else ''}, got {v}"
    return check


def in_unit_interval(v: float) -> str | None:
    return None if 0 <= v < 1 else f"must be in [0, 1), got {v}"


def positive(v: float) -> str | None:
    return None if 0 < v < math.inf else f"must be > 0 and finite, got {v}"


def parses(parse: Callable[[str], Any]) -> Check:
    """A check that runs the option's parser: its error's reason (HvdganError.reason) is the answer."""
    def check(value):
        if value is None:
            return None
        try:
            parse(value)
        except HvdganError as exc:
            return exc.reason
        return None
    return check


def _policy(text):
    from ..models import parse_policy  # (not models.augment: `hvdgan launch` checks a job without torch)

    return parse_policy(text)


def _metrics(text):
    from ..eval import parse_metrics  # (not eval.scores: `hvdgan launch` checks a job without torch)

    return parse_metrics(text)


def _placement(text):
    from ..models.placement import Placement

    return Placement.parse(text)


@dataclass(frozen=True)
class DatasetOptions:
    """What the run reads."""

    data: str = option("", "Dataset directory written by `hvdgan prepare`.",
                       check=lambda v: None if v else "no dataset directory given (--data DIR, or `data:` in the job file)")
    in_memory: bool = option(True, "Hold this rank's shards in memory (else read slices from the HDF5 files).")


@dataclass(frozen=True)
class NetworkOptions:
    """G and D (hvdgan.models)."""

    model: str = option("dcgan", "Network family: dcgan (the seed's) or resnet (SNGAN/BigGAN-style residual G "
                        "and D, spectral norm in D).", choices=MODELS)
    image_size: int | None = option(None, "Image size the model is built for (default: the data's; 32 or 64).",
                                    check=lambda v: None if v is None or v in SIZES
                                    else f"DCGAN takes {' or '.join(map(str, SIZES))}, got {v}")
    nz: int = option(100, "Length of the noise vector z.", check=at_least(1))
    ngf: int = option(64, "Generator width (channels of its last hidden layer).", check=at_least(1))
    ndf: int = option(64, "Discriminator width (channels of its first layer).", check=at_least(1))
    spectral_norm: bool = option(False, "Spectral normalisation in D (replaces D's BatchNorm; resnet's D always "
                                 "has it).")
    conditional: bool = option(False, "Class-conditional training: conditional BatchNorm in G, a projection "
                               "discriminator; labels from the dataset.")


@dataclass(frozen=True)
class RegularisationOptions:
    """What D sees and is penalised for, and what G is."""

    augment: str = option("", "DiffAugment policy for D's real and fake inputs: comma-separated translation, "
                          "cutout, color.", check=parses(_policy))
    r1: float = option(0.0, "R1 gradient penalty weight (gamma) on real images (0: off).", check=at_least(0))
    r1_every: int = option(16, "Lazy R1: apply the penalty every N discriminator steps (scaled by N).",
                           check=at_least(1))
    mode_seeking: float = option(0.0, "Mode-seeking term's weight (MSGAN): G's loss grows when two noise vectors "
                                 "of one class give alike images, against collapse to one image per class (0: off).",
                                 check=at_least(0))


@dataclass(frozen=True)
class OptimOptions:
    """The losses and both Adams (the seed: BCE, lr 2e-4, betas 0.5/0.999)."""

    loss: str | None = option(None, "bce: the seed's BCE with the non-saturating G loss (on logits); hinge: "
                              "hinge loss (default: hinge for resnet, bce for dcgan).", choices=("bce", "hinge"))
    lr_g: float = option(2e-4, "Generator learning rate (Adam).", check=positive)
    lr_d: float = option(2e-4, "Discriminator learning rate (Adam).", check=positive)
    beta1: float = option(0.5, "Adam beta1.", check=in_unit_interval)
    beta2: float = option(0.999, "Adam beta2.", check=in_unit_interval)
    lr_scaling: str = option("none", "Scale both learning rates with the number of ranks: none, linear or sqrt.",
                             choices=("none", "linear", "sqrt"))
    d_steps: int = option(1, "Discriminator updates per generator update (each on its own batch).",
                          check=at_least(1))
    ema: float = option(0.999, "Decay of the moving average of G's weights used for samples (0: off).",
                        check=in_unit_interval)


@dataclass(frozen=True)
class ScheduleOptions:
    """How much to train, in what order."""

    batch_size: int = option(64, "Images per rank per step.", check=at_least(1))
    epochs: int = option(5, "Epochs to train (ignored when --max-steps is given).", check=at_least(0))
    max_steps: int | None = option(None, "Generator steps to train.", check=at_least(1))
    seed: int = option(0, "Seed shared by all ranks (data order, initial weights); noise differs per rank.",
                       check=at_least(0))


@dataclass(frozen=True)
class DistributionOptions:
    """Devices, placement, precision, and Horovod's options."""

    device: str = option("auto", "Default device of the networks: auto (cuda:local_rank if there is a GPU), cpu "
                         "or cuda.", choices=("auto", "cpu", "cuda"))
    placement: str | None = option(None, "Where G, D or their blocks live, e.g. G=gpu0,D=cpu (see "
                                   "docs/placement.md).", check=parses(_placement))
    threads: int | None = option(None, "Torch threads per rank (default: OMP_NUM_THREADS, else this rank's share "
                                 "of its allowed CPUs).", check=at_least(1))
    amp: bool | None = option(None, "bf16 autocast (default: on when a network is on a GPU).")
    channels_last: bool | None = option(None, "channels_last memory format (default: on when a network is on a "
                                        "GPU).")
    fp16_allreduce: bool = option(False, "Compress gradients to fp16 for the allreduce (half the bytes).")
    sync_bn: bool = option(False, "Horovod SyncBatchNorm: BatchNorm statistics over all ranks.")
    elastic: bool = option(False, "Horovod elastic training: the run goes on when ranks are lost and takes them "
                           "back when they return (start it with `hvdgan launch --elastic`; docs/elastic.md).")
    commit_every: int = option(20, "With --elastic: keep a copy of the state in memory every N steps (and at "
                               "every checkpoint); a lost rank costs the steps since the last one.",
                               check=at_least(1))


@dataclass(frozen=True)
class OutputOptions:
    """What the run writes, and how often."""

    out: str = option("runs/hvdgan", "Run directory: config, metrics.jsonl, samples/, checkpoints/, losses.png.")
    log_every: int = option(10, "Log (and check for NaN and preemption) every N steps.", check=at_least(1))
    sample_every: int = option(200, "Write a sample grid and the 8x8 Frechet distance every N steps.",
                               check=at_least(1))
    checkpoint_every: int = option(500, "Write a checkpoint every N steps.", check=at_least(1))
    keep_checkpoints: int = option(3, "Keep the newest N checkpoints.", check=at_least(1))
    resume: str = option("none", "none, auto (newest checkpoint in OUT/checkpoints) or a checkpoint path.")
    tensorboard: bool = option(True, "Write TensorBoard events to OUT/tensorboard when tensorboard is installed.")


@dataclass(frozen=True)
class EvaluationOptions:
    """Inception metrics during training (hvdgan.eval, docs/evaluation.md)."""

    eval_every: int = option(0, "Inception FID (and --eval-metrics) of G's EMA every N steps and at the end; the "
                             "best FID's checkpoint is kept as checkpoints/ckpt-best.pt (0: off).",
                             check=lambda v: None if v >= 0 else f"must be >= 0 (0: off), got {v}")
    eval_num: int = option(10_000, "Generated images per evaluation (shared among the ranks).", check=at_least(2))
    eval_real_num: int | None = option(None, "Reference images (default: all) from --data's held-out split when it "
                                       "has one (prepare --holdout), else from --data; features cached in "
                                       "eval-cache there.", check=at_least(2))
    eval_metrics: str = option("fid,pr", "Metrics of each evaluation, comma-separated: fid, kid, pr "
                               "(precision/recall).", check=parses(_metrics))
    inception: str | None = option(None, "Inception weights file (default: $HVDGAN_INCEPTION, else the one "
                                   "scripts/setup.sh fetched).")


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a run, by section."""

    dataset: DatasetOptions = DatasetOptions()
    network: NetworkOptions = NetworkOptions()
    regularisation: RegularisationOptions = RegularisationOptions()
    optim: OptimOptions = OptimOptions()
    schedule: ScheduleOptions = ScheduleOptions()
    distribution: DistributionOptions = DistributionOptions()
    output: OutputOptions = OutputOptions()
    evaluation: EvaluationOptions = EvaluationOptions()

    def flat(self) -> dict[str, Any]:
        """{option: value}, every option once (config.json's form)."""
        return {name: getattr(getattr(self, spec.section), name) for name, spec in OPTIONS.items()}


@dataclass(frozen=True)
class Spec:
    """One option, as the CLI, the job files and the checks see it."""

    name: str
    section: str
    type: type  # bool, int, float or str
    optional: bool  # None is a value (the default that is resolved later)
    default: Any
    help: str
    choices: tuple | None
    check: Check | None


def _specs() -> dict[str, Spec]:
    specs = {}
    for section in dataclasses.fields(TrainConfig):
        cls = section.default.__class__
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
            base = next(a for a in args if a is not type(None))
            specs[f.name] = Spec(f.name, section.name, base, type(None) in args, f.default, f.metadata["help"],
                                 f.metadata["choices"], f.metadata["check"])
    return specs


OPTIONS: dict[str, Spec] = _specs()
