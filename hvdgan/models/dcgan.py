"""DCGAN generator and discriminator (the seed's architecture), for 32x32 and 64x64 images.

Each network is an nn.Sequential of named blocks, so that placement (hvdgan.models.placement) can put
blocks on different devices by name:

    Generator:      stem (z -> 4x4), body (upsampling), out (to image, tanh)
    Discriminator:  trunk (image -> 4x4 features), head (features -> one logit per image)

The discriminator returns logits; the losses apply the sigmoid (BCE-with-logits) for numerical safety.
Class-conditional (num_classes > 0): G takes z with a class embedding appended and has conditional
BatchNorm (a per-class gain and bias after each BatchNorm); D is a projection discriminator (Miyato &
Koyama 2018: D's logit plus the inner product of a class embedding with the trunk's sum-pooled
features). Every block takes (h, y), y the class labels or None.
"""

from __future__ import annotations

import torch
from torch import nn

from . import check_image_size


def _levels(image_size: int) -> int:
    check_image_size(image_size)
    return {32: 3, 64: 4}[image_size]  # number of 2x up/down-samplings between 4x4 and the image


class CondBatchNorm2d(nn.Module):
    """BatchNorm2d without its own affine (so hvdgan.models.syncbn converts it like any BatchNorm), then a
    per-class gain and bias looked up from embeddings."""

    def __init__(self, features: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(features, affine=False)
        self.gain = nn.Embedding(num_classes, features)
        self.bias = nn.Embedding(num_classes, features)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]


class ClassInput(nn.Module):
    """A conditional DCGAN's input: z with a learnt class embedding appended (as cDCGAN's one-hot label,
    or BigGAN's shared embedding concatenated with z). Small at first (std 0.1), so that G does not learn
    to ignore z within a class before it has learnt to use it (the measurement: docs/benchmarks.md)."""

    def __init__(self, nz: int, num_classes: int):
        super().__init__()
        self.embed = nn.Embedding(num_classes, nz)
        nn.init.normal_(self.embed.weight, 0.0, 0.1)

    def forward(self, z, y):
        return torch.cat([z.flatten(1), self.embed(y)], 1)[:, :, None, None]


def norm(features: int, num_classes: int = 0) -> nn.Module:
    """G's BatchNorm: conditional when there are classes."""
    return CondBatchNorm2d(features, num_classes) if num_classes else nn.BatchNorm2d(features)


class Block(nn.Sequential):
    """A Sequential whose forward takes (h, y): conditional BatchNorms get the labels, other layers not."""

    def forward(self, h, y=None):
        for layer in self:
            h = layer(h, y) if isinstance(layer, (CondBatchNorm2d, ClassInput)) else layer(h)
        return h


class Generator(nn.Sequential):
    """z [B, nz, 1, 1] (and labels [B], conditional) -> image [B, C, S, S] in [-1, 1]: transposed convs +
    BatchNorm + ReLU, Tanh."""

    BLOCKS = ("stem", "body", "out")

    def __init__(self, nz: int = 100, ngf: int = 64, channels: int = 3, image_size: int = 64, num_classes: int = 0):
        levels = _levels(image_size)
        width = ngf * 2 ** (levels - 1)
        first = [ClassInput(nz, num_classes)] if num_classes else []  # (z and the class embedding)
        stem = Block(*first, nn.ConvTranspose2d(nz * (2 if num_classes else 1), width, 4, 1, 0, bias=False),
                     norm(width, num_classes), nn.ReLU(True))
        body = []
        for _ in range(levels - 1):
            body += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), norm(width // 2, num_classes),
                     nn.ReLU(True)]
            width //= 2
        out = Block(nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh())
        super().__init__()
        self.add_module("stem", stem)
        self.add_module("body", Block(*body))
        self.add_module("out", out)
        self.nz, self.ngf, self.channels, self.image_size = nz, ngf, channels, image_size
        self.num_classes = num_classes
        init_weights(self)

    def forward(self, z, y=None):
        if self.num_classes and y is None:
            raise ValueError("a conditional generator needs class labels")
        h = z
        for block in self:
            h = block(h, y)
        return h


class ProjectionHead(nn.Module):
    """The conditional discriminator's head: the unconditional head's logit plus <embed(y), sum-pooled h>."""

    def __init__(self, width: int, num_classes: int, sn):
        super().__init__()
        self.conv = sn(nn.Conv2d(width, 1, 4, 1, 0, bias=False))
        self.embed = nn.Embedding(num_classes, width)
        nn.init.normal_(self.embed.weight, 0.0, 0.02)
        self.embed = sn(self.embed)

    def forward(self, h, y):
        return self.conv(h).flatten(0) + (self.embed(y) * h.sum((2, 3))).sum(1)


class Discriminator(nn.Sequential):
    """image [B, C, S, S] -> logits [B]: convs + LeakyReLU(0.2) + BatchNorm (optionally spectral norm)."""

    BLOCKS = ("trunk", "head")

    def __init__(self, ndf: int = 64, channels: int = 3, image_size: int = 64, spectral_norm: bool = False,
                 num_classes: int = 0):
        levels = _levels(image_size)
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        layers = [sn(nn.Conv2d(channels, ndf, 4, 2, 1, bias=False)), nn.LeakyReLU(0.2, inplace=True)]
        width = ndf
        for _ in range(levels - 1):
            layers += [sn(nn.Conv2d(width, width * 2, 4, 2, 1, bias=False))]
            # BatchNorm and spectral norm are usually not combined: SN replaces BN as D's regulariser.
            layers += [] if spectral_norm else [nn.BatchNorm2d(width * 2)]
            layers += [nn.LeakyReLU(0.2, inplace=True)]
            width *= 2
        head = (ProjectionHead(width, num_classes, sn) if num_classes else
                Block(sn(nn.Conv2d(width, 1, 4, 1, 0, bias=False)), nn.Flatten(0)))
        super().__init__()
        self.add_module("trunk", Block(*layers))
        self.add_module("head", head)
        self.ndf, self.channels, self.image_size, self.spectral_norm = ndf, channels, image_size, spectral_norm
        self.num_classes = num_classes
        init_weights(self)

    def forward(self, x, y=None):
        if self.num_classes and y is None:
            raise ValueError("a conditional discriminator needs class labels")
        return self.head(self.trunk(x, y), y)


def init_weights(model: nn.Module) -> None:
    """The DCGAN paper's initialisation: conv weights N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            weight = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
            nn.init.normal_(weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def architecture(model: nn.Module) -> dict:
    """What a checkpoint records to refuse a resume into a different network."""
    # (num_classes only when conditional: unconditional checkpoints of earlier versions still match)
    classes = {"num_classes": model.num_classes} if getattr(model, "num_classes", 0) else {}
    if isinstance(model, Generator):
        return {"net": "G", "nz": model.nz, "ngf": model.ngf, "channels": model.channels, "image_size": model.image_size,
                **classes}
    if isinstance(model, Discriminator):
        return {"net": "D", "ndf": model.ndf, "channels": model.channels, "image_size": model.image_size,
                "spectral_norm": model.spectral_norm, **classes}
    raise TypeError(type(model))
