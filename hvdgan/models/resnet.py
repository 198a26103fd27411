"""SNGAN/BigGAN-style residual generator and discriminator, for 32x32 and 64x64 images, optionally
class-conditional (conditional BatchNorm in G, a projection discriminator).

The networks have DCGAN's block names, so `--placement` puts them on devices the same way:

    Generator:      stem (z -> 4x4 features), body (up-sampling residual blocks), out (BN, ReLU, conv, tanh)
    Discriminator:  trunk (down-sampling residual blocks, spectral norm), head (ReLU, sum-pool, linear
                    [+ projection of the class embedding])

Every block takes (h, y), y the class labels or None, so a placement's input hook moves both.
Widths follow Miyato et al. (SNGAN) at 32x32: G ngf*4 throughout, D ndf*2 throughout; and BigGAN's
64x64 multipliers: G ngf*16 -> ngf, D ndf -> ndf*16. The discriminator returns logits [B].
References: Miyato et al. 2018 (spectral norm; cGANs with projection discriminator), Brock et al. 2019.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import check_image_size
from .dcgan import CondBatchNorm2d


def _norm(features: int, num_classes: int) -> nn.Module:
    return CondBatchNorm2d(features, num_classes) if num_classes else nn.BatchNorm2d(features)


def _apply_norm(norm: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    return norm(x, y) if isinstance(norm, CondBatchNorm2d) else norm(x)


def _init(layer: nn.Module, spectral_norm: bool = False, gain: float = 1.0) -> nn.Module:
    nn.init.xavier_uniform_(layer.weight, gain)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)
    return nn.utils.parametrizations.spectral_norm(layer) if spectral_norm else layer


# ------------------------------------------------------------------------------------------ generator
class GBlock(nn.Module):
    """BN-ReLU-up-conv-BN-ReLU-conv, plus an up-sampled 1x1-conv shortcut."""

    def __init__(self, cin: int, cout: int, num_classes: int):
        super().__init__()
        self.bn1, self.bn2 = _norm(cin, num_classes), _norm(cout, num_classes)
        # no biases: every output here feeds a BatchNorm, which removes them (their gradients would be
        # rounding noise, which Adam scales up to full-size steps)
        self.conv1 = _init(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), gain=2 ** 0.5)
        self.conv2 = _init(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), gain=2 ** 0.5)
        self.shortcut = _init(nn.Conv2d(cin, cout, 1, 1, 0, bias=False))

    def forward(self, x, y=None):
        h = F.interpolate(F.relu(_apply_norm(self.bn1, x, y)), scale_factor=2)
        h = self.conv2(F.relu(_apply_norm(self.bn2, self.conv1(h), y)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2))


class GStem(nn.Module):
    def __init__(self, nz: int, width: int):
        super().__init__()
        self.width = width
        self.linear = _init(nn.Linear(nz, 4 * 4 * width, bias=False))  # (feeds a BatchNorm)

    def forward(self, z, y=None):
        return self.linear(z.flatten(1)).view(z.shape[0], self.width, 4, 4)


class GBody(nn.ModuleList):
    def forward(self, h, y=None):
        for block in self:
            h = block(h, y)
        return h


class GOut(nn.Module):
    def __init__(self, width: int, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(width)
        self.conv = _init(nn.Conv2d(width, channels, 3, 1, 1))

    def forward(self, h, y=None):
        return torch.tanh(self.conv(F.relu(self.bn(h))))


class ResNetGenerator(nn.Module):
    """z [B, nz, 1, 1] (or [B, nz]) and labels [B] (conditional) -> image [B, C, S, S] in [-1, 1]."""

    BLOCKS = ("stem", "body", "out")

    def __init__(self, nz: int = 128, ngf: int = 64, channels: int = 3, image_size: int = 32, num_classes: int = 0):
        super().__init__()
        check_image_size(image_size)
        widths = [ngf * 4] * 4 if image_size == 32 else [ngf * m for m in (16, 8, 4, 2, 1)]
        self.stem = GStem(nz, widths[0])
        self.body = GBody(GBlock(a, b, num_classes) for a, b in zip(widths, widths[1:]))
        self.out = GOut(widths[-1], channels)
        self.nz, self.ngf, self.channels, self.image_size, self.num_classes = nz, ngf, channels, image_size, num_classes

    def forward(self, z, y=None):
        if self.num_classes and y is None:
            raise ValueError("a conditional generator needs class labels")
        h = z
        for block in self.children():
            h = block(h, y)
        return h


# -------------------------------------------------------------------------------------- discriminator
class DBlock(nn.Module):
    """(ReLU)-conv-ReLU-conv-(avgpool), plus a 1x1-conv shortcut when the shape changes; spectral norm.
    The first block (`first`) skips the leading ReLU and pools before its shortcut (SNGAN's
    "optimized" block)."""

    def __init__(self, cin: int, cout: int, down: bool, first: bool = False):
        super().__init__()
        self.down, self.first = down, first
        self.conv1 = _init(nn.Conv2d(cin, cout, 3, 1, 1), True, 2 ** 0.5)
        self.conv2 = _init(nn.Conv2d(cout, cout, 3, 1, 1), True, 2 ** 0.5)
        self.shortcut = _init(nn.Conv2d(cin, cout, 1, 1, 0), True) if (cin != cout or down) else None

    def forward(self, x, y=None):
        h = x if self.first else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))
        if self.down:
            h = F.avg_pool2d(h, 2)
        sc = x
        if self.first:
            sc = self.shortcut(F.avg_pool2d(x, 2))
        elif self.shortcut is not None:
            sc = self.shortcut(x)
            sc = F.avg_pool2d(sc, 2) if self.down else sc
        return h + sc


class DTrunk(nn.ModuleList):
    def forward(self, x, y=None):
        for block in self:
            x = block(x, y)
        return x


class DHead(nn.Module):
    """ReLU, global sum pooling, a linear logit; with classes, plus <embed(y), h> (projection)."""

    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.linear = _init(nn.Linear(width, 1), True)
        self.embed = _init(nn.Embedding(num_classes, width), True) if num_classes else None

    def forward(self, h, y=None):
        h = F.relu(h).sum((2, 3))
        out = self.linear(h).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(y) * h).sum(1)
        return out


class ResNetDiscriminator(nn.Module):
    """image [B, C, S, S] and labels [B] (conditional) -> logits [B]."""

    BLOCKS = ("trunk", "head")

    def __init__(self, ndf: int = 64, channels: int = 3, image_size: int = 32, num_classes: int = 0):
        super().__init__()
        check_image_size(image_size)
        if image_size == 32:
            w = ndf * 2
            spec = [(channels, w, True), (w, w, True), (w, w, False), (w, w, False)]
        else:
            ws = [channels] + [ndf * m for m in (1, 2, 4, 8, 16)]
            spec = [(a, b, i < 4) for i, (a, b) in enumerate(zip(ws, ws[1:]))]
        self.trunk = DTrunk(DBlock(a, b, down, first=i == 0) for i, (a, b, down) in enumerate(spec))
        self.head = DHead(spec[-1][1], num_classes)
        self.ndf, self.channels, self.image_size, self.num_classes = ndf, channels, image_size, num_classes

    def forward(self, x, y=None):
        if self.num_classes and y is None:
            raise ValueError("a conditional discriminator needs class labels")
        return self.head(self.trunk(x, y), y)


def architecture(model: nn.Module) -> dict:
    """What a checkpoint records to refuse a resume into a different network (and to rebuild G)."""
    if isinstance(model, ResNetGenerator):
        return {"net": "G", "model": "resnet", "nz": model.nz, "ngf": model.ngf, "channels": model.channels,
                "image_size": model.image_size, "num_classes": model.num_classes}
    if isinstance(model, ResNetDiscriminator):
        return {"net": "D", "model": "resnet", "ndf": model.ndf, "channels": model.channels,
                "image_size": model.image_size, "num_classes": model.num_classes, "spectral_norm": True}
    raise TypeError(type(model))
