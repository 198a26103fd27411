"""`hvdgan sample`: images from a checkpoint, without Horovod or the training data."""

from __future__ import annotations

from pathlib import Path

import torch

from . import checkpoint as ckpt
from .errors import HvdganError
from .metrics import save_grid
from .models import Generator


def load_generator(path: str | Path, ema: bool = True) -> Generator:
    state = ckpt.load(Path(path))
    arch = state["arch"]["G"]
    G = Generator(arch["nz"], arch["ngf"], arch["channels"], arch["image_size"])
    if ema and state.get("G_ema") is not None:
        weights = {k[len("module."):]: v for k, v in state["G_ema"].items() if k.startswith("module.")}
    else:
        weights = state["G"]
    G.load_state_dict(weights)
    return G.eval()


def sample_checkpoint(path, out, num: int = 64, single: bool = False, seed: int = 0, ema: bool = True,
                      overwrite: bool = False) -> Path:
    out = Path(out)
    if single:
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise HvdganError(f"{out}: directory exists and is not empty (use --overwrite)")
    elif out.exists() and not overwrite:
        raise HvdganError(f"{out}: exists (use --overwrite, or another --out)")
    if not single and out.suffix.lower() != ".png":
        raise HvdganError(f"--out {out}: a grid is written as PNG: give a .png path (or --single DIR)")
    G = load_generator(path, ema)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        images = torch.cat([G(torch.randn(min(256, num - i), G.nz, 1, 1, generator=gen))
                            for i in range(0, num, 256)])
    if not single:
        save_grid(images, out, nrow=max(1, int(num ** 0.5)))
        return out
    out.mkdir(parents=True, exist_ok=True)
    from torchvision.utils import save_image

    for i, img in enumerate(images):
        save_image(img, out / f"sample-{i:05d}.png", normalize=True, value_range=(-1, 1))
    return out
