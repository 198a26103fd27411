"""The model families by name (`--model dcgan|resnet`): build G and D, describe them for checkpoints,
rebuild a generator from a checkpoint's description, and the labels for per-class sample grids."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import HvdganError
from . import MODELS, dcgan, resnet


def build_networks(model: str, nz: int, ngf: int, ndf: int, channels: int, image_size: int, spectral_norm: bool = False,
          num_classes: int = 0) -> tuple[nn.Module, nn.Module]:
    """(G, D) of a family; num_classes > 0 makes them class-conditional (conditional BatchNorm in G, a
    projection discriminator)."""
    if model == "dcgan":
        return (dcgan.Generator(nz, ngf, channels, image_size, num_classes),
                dcgan.Discriminator(ndf, channels, image_size, spectral_norm, num_classes))
    if model == "resnet":
        return (resnet.ResNetGenerator(nz, ngf, channels, image_size, num_classes),
                resnet.ResNetDiscriminator(ndf, channels, image_size, num_classes))
    raise HvdganError(f"--model {model!r}: not one of {', '.join(MODELS)}")


def architecture(net: nn.Module) -> dict:
    if isinstance(net, (resnet.ResNetGenerator, resnet.ResNetDiscriminator)):
        return resnet.architecture(net)
    return dcgan.architecture(net)  # (DCGAN's record has no "model" key: older checkpoints still match)


def generator_from_arch(arch: dict) -> nn.Module:
    if arch.get("model", "dcgan") == "resnet":
        return resnet.ResNetGenerator(arch["nz"], arch["ngf"], arch["channels"], arch["image_size"],
                                      arch.get("num_classes", 0))
    return dcgan.Generator(arch["nz"], arch["ngf"], arch["channels"], arch["image_size"], arch.get("num_classes", 0))


def num_classes(G: nn.Module) -> int:
    return getattr(G, "num_classes", 0)


def grid_labels(classes: int, per_class: int) -> torch.Tensor:
    """Labels for a grid with one row per class: 0 x per_class, 1 x per_class, ..."""
    return torch.arange(classes).repeat_interleave(per_class)
