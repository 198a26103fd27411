"""DCGAN generator and discriminator (the seed's architecture), for 32x32 and 64x64 images.

Each network is an nn.Sequential of named blocks, so that placement (hvdgan.placement) can put
blocks on different devices by name:

    Generator:      stem (z -> 4x4), body (upsampling), out (to image, tanh)
    Discriminator:  trunk (image -> 4x4 features), head (features -> one logit per image)

The discriminator returns logits; the losses apply the sigmoid (BCE-with-logits) for numerical safety.
"""

from __future__ import annotations

from torch import nn

from .errors import HvdganError

SIZES = (32, 64)


def check_image_size(size: int, what: str = "image size") -> None:
    if size not in SIZES:
        raise HvdganError(f"{what} {size}x{size} does not fit DCGAN: it takes 32x32 or 64x64 "
                          "(re-prepare the data with --size 32 or --size 64)")


def _levels(image_size: int) -> int:
    check_image_size(image_size)
    return {32: 3, 64: 4}[image_size]  # number of 2x up/down-samplings between 4x4 and the image


class Generator(nn.Sequential):
    """z [B, nz, 1, 1] -> image [B, C, S, S] in [-1, 1]: transposed convs + BatchNorm + ReLU, Tanh."""

    BLOCKS = ("stem", "body", "out")

    def __init__(self, nz: int = 100, ngf: int = 64, channels: int = 3, image_size: int = 64):
        levels = _levels(image_size)
        width = ngf * 2 ** (levels - 1)
        stem = nn.Sequential(nn.ConvTranspose2d(nz, width, 4, 1, 0, bias=False), nn.BatchNorm2d(width), nn.ReLU(True))
        body = []
        for _ in range(levels - 1):
            body += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        out = nn.Sequential(nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh())
        super().__init__()
        self.add_module("stem", stem)
        self.add_module("body", nn.Sequential(*body))
        self.add_module("out", out)
        self.nz, self.ngf, self.channels, self.image_size = nz, ngf, channels, image_size
        init_weights(self)


class Discriminator(nn.Sequential):
    """image [B, C, S, S] -> logits [B]: convs + LeakyReLU(0.2) + BatchNorm (optionally spectral norm)."""

    BLOCKS = ("trunk", "head")

    def __init__(self, ndf: int = 64, channels: int = 3, image_size: int = 64, spectral_norm: bool = False):
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
        head = nn.Sequential(sn(nn.Conv2d(width, 1, 4, 1, 0, bias=False)), nn.Flatten(0))
        super().__init__()
        self.add_module("trunk", nn.Sequential(*layers))
        self.add_module("head", head)
        self.ndf, self.channels, self.image_size, self.spectral_norm = ndf, channels, image_size, spectral_norm
        init_weights(self)


def init_weights(model: nn.Module) -> None:
    """The DCGAN paper's initialisation: conv weights N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            weight = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
            nn.init.normal_(weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def architecture(model: nn.Module) -> dict:
    """What a checkpoint records to refuse a resume into a different network."""
    if isinstance(model, Generator):
        return {"net": "G", "nz": model.nz, "ngf": model.ngf, "channels": model.channels, "image_size": model.image_size}
    if isinstance(model, Discriminator):
        return {"net": "D", "ndf": model.ndf, "channels": model.channels, "image_size": model.image_size,
                "spectral_norm": model.spectral_norm}
    raise TypeError(type(model))
