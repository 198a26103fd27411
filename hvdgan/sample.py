"""`hvdgan sample`: images from a checkpoint, without Horovod or the training data."""

from __future__ import annotations

from pathlib import Path

import torch

from .run import checkpoint as ckpt
from .errors import HvdganError
from .run.runlog import save_grid
from .models.zoo import generator_from_arch, grid_labels, num_classes


def load_generator(path: str | Path, ema: bool = True) -> torch.nn.Module:
    state = ckpt.load(Path(path))
    G = generator_from_arch(state["arch"]["G"])
    if ema and state.get("G_ema") is not None:
        weights = {k[len("module."):]: v for k, v in state["G_ema"].items() if k.startswith("module.")}
    else:
        weights = state["G"]
    G.load_state_dict(weights)
    return G.eval()


def sample_checkpoint(path, out, num: int = 64, single: bool = False, seed: int = 0, ema: bool = True,
                      overwrite: bool = False, class_: int | None = None) -> Path:
    """A grid (8 x 8 for 64; one row per class for a conditional G without --class) or single images;
    `class_`: every image of that class (conditional checkpoints only)."""
    out = Path(out)
    check_out(out, single, overwrite)
    G = load_generator(path, ema)
    classes, nrow = num_classes(G), max(1, int(num ** 0.5))
    if class_ is not None and not classes:
        raise HvdganError(f"--class {class_}: {path} holds an unconditional generator (trained without --conditional)")
    if class_ is not None and not 0 <= class_ < classes:
        raise HvdganError(f"--class {class_}: {path}'s generator knows classes 0..{classes - 1}")
    labels = None
    if class_ is not None:
        labels = torch.full((num,), class_)
    elif classes:  # one row per class
        nrow = max(1, num // classes)
        labels = grid_labels(classes, nrow) if single is False else torch.arange(num) % classes
        num = len(labels)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        images = torch.cat([G(torch.randn(min(256, num - i), G.nz, 1, 1, generator=gen),
                              *(() if labels is None else (labels[i:i + 256],)))
                            for i in range(0, num, 256)])
    try:
        if not single:
            save_grid(images, out, nrow=nrow)
            return out
        out.mkdir(parents=True, exist_ok=True)
        from torchvision.utils import save_image

        for i, img in enumerate(images):
            save_image(img, out / f"sample-{i:05d}.png", normalize=True, value_range=(-1, 1))
    except OSError as exc:  # (a full disk, a directory made read-only since the check)
        raise HvdganError(f"--out {out}: cannot write the images ({exc.strerror or exc})") from None
    return out


def check_out(out: Path, single: bool, overwrite: bool) -> None:
    """Refuse an --out that cannot take what `sample` writes, before the checkpoint is read: a grid is one PNG
    file, --single images go into a directory; nothing is replaced without --overwrite."""
    if out.is_symlink() and not out.exists():
        raise HvdganError(f"--out {out}: a symbolic link to nothing (or a loop of them)")
    above = next((p for p in out.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise HvdganError(f"--out {out}: {above} is a file, not a directory")
    if single:
        if out.exists() and not out.is_dir():
            raise HvdganError(f"--out {out}: exists and is not a directory (--single writes its images into one)")
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise HvdganError(f"--out {out}: directory exists and is not empty (use --overwrite)")
        return
    if out.is_dir():
        raise HvdganError(f"--out {out}: is a directory; a grid is one PNG file (give a .png path, or --single "
                          "for one file an image)")
    if out.exists() and not overwrite:
        raise HvdganError(f"--out {out}: exists (use --overwrite, or another --out)")
    if out.suffix.lower() != ".png":
        raise HvdganError(f"--out {out}: a grid is written as PNG: give a .png path (or --single DIR)")
