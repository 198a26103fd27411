"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training"):
the same random, differentiable transformations applied to real and fake images before D, in D's
update and in G's, so that D cannot memorise a small dataset and G still gets gradients through them.

Policy: a comma-separated subset of `color`, `translation`, `cutout` (the paper's choice for small
datasets is all three), applied in that order. Random numbers come from the generator passed in
(the trainer's per-rank noise generator, saved in checkpoints), drawn on its device, so that a resumed
run augments exactly as an uninterrupted one. Images are in [-1, 1], [B, C, H, W].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import parse_policy  # (the policy's parser lives where the checks import it without torch)


def _rand(shape, gen: torch.Generator | None, device) -> torch.Tensor:
    where = gen.device if gen is not None else device
    return torch.rand(shape, generator=gen, device=where).to(device)


def color(x, gen=None):
    b = x.shape[0]
    x = x + (_rand((b, 1, 1, 1), gen, x.device) - 0.5)  # brightness
    mean = x.mean(1, keepdim=True)
    x = (x - mean) * (_rand((b, 1, 1, 1), gen, x.device) * 2) + mean  # saturation
    mean = x.mean((1, 2, 3), keepdim=True)
    return (x - mean) * (_rand((b, 1, 1, 1), gen, x.device) + 0.5) + mean  # contrast


def translation(x, gen=None, ratio: float = 0.125):
    """Shift each image by up to `ratio` of its size (zero-padded), as a differentiable gather."""
    b, c, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = (_rand((b, 1, 1), gen, x.device) * (2 * sh + 1)).long().clamp_(max=2 * sh) - sh
    tx = (_rand((b, 1, 1), gen, x.device) * (2 * sw + 1)).long().clamp_(max=2 * sw) - sw
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + ty + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + tx + 1).clamp(0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])  # [b, c, h + 2, w + 2]
    idx = (rows * (w + 2) + cols).view(b, 1, h * w).expand(b, c, h * w)
    return padded.flatten(2).gather(2, idx).view(b, c, h, w)


def cutout(x, gen=None, ratio: float = 0.5):
    """Zero a square of `ratio` of the image's size at a random centre in each image."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = (_rand((b, 1, 1), gen, x.device) * (h + 1 - ch % 2)).long()
    ox = (_rand((b, 1, 1), gen, x.device) * (w + 1 - cw % 2)).long()
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = ((rows >= oy - ch // 2) & (rows < oy - ch // 2 + ch) & (cols >= ox - cw // 2) & (cols < ox - cw // 2 + cw))
    return x * (~inside).unsqueeze(1).to(x.dtype)


class DiffAugment:
    """Callable: images (and a generator) -> augmented images; the identity for an empty policy."""

    def __init__(self, ops: tuple[str, ...] | str | None):
        """`ops`: the parsed policy (hvdgan.config resolves it), or its text."""
        self.ops = ops if isinstance(ops, tuple) else parse_policy(ops)

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        for op in self.ops:
            x = {"color": color, "translation": translation, "cutout": cutout}[op](x, gen)
        return x
