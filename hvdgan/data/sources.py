"""Where `hvdgan prepare` reads images from: the CIFAR-10 python archive (or its extracted folder), a folder
of images (class sub-folders become labels), .npy/.npz arrays, and the embedded `digits` demo set
(scikit-learn's bundled 8x8 handwritten digits, 1,797 real images); and in-memory arrays (ArraySource, for
`write_dataset`).

Every source is a small picklable description (paths and options, no open files, no data) with
    count, channels, height, width   after resizing / channel conversion
    label_names                      list of names, or None when the source has no labels
    read(idx) -> (uint8 [n, C, H, W], int64 [n] or None)   for ascending source indices
so that `prepare`'s worker processes and ranks each read (decode, resize) their own shards. Loaded
arrays are cached per process.

Resizing and channel conversion: hvdgan.data.images.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from ..errors import HvdganError
from .images import fit, square, to_nchw
from .modes import native_channels, to_8bit

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")


def checked_labels(labels, names, count: int, what: str) -> tuple[np.ndarray | None, list[str] | None]:
    """A source's labels (integers >= 0, one per image) as int64, and their names (default: "0", "1", ...
    up to the largest label); (None, None) for a source without labels."""
    if labels is None:
        if names is not None:
            raise HvdganError(f"{what}: label names given without labels")
        return None, None
    labels = np.asarray(labels)
    if labels.shape != (count,) or labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
        raise HvdganError(f"{what}: labels have shape {labels.shape} and dtype {labels.dtype}; expected "
                          f"({count},) integers >= 0")
    labels = labels.astype(np.int64)
    top = int(labels.max()) if labels.size else -1
    if names is None:
        names = range(top + 1)
    elif len(names) <= top:
        raise HvdganError(f"{what}: {len(names)} label names but labels go up to {top}")
    return labels, [str(n) for n in names]


class _Source:
    portable = True  # picklable without its data: workers and ranks read it themselves
    label_names: list[str] | None = None

    def __init__(self, spec: str, size: int | None, channels: int | None, native: tuple[int, int, int]):
        nc, nh, nw = native
        self.spec = spec
        self.native = native
        self.channels = channels or nc
        if callable(size):  # a rule (height, width) -> size: `hvdgan prepare`'s default, hvdgan.models'
            size = size(nh, nw)
        self.height = self.width = size or min(nh, nw)  # (images are centre-cropped to a square)
        self.size = self.height

    def describe(self) -> str:
        return self.spec

    def _arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def read(self, idx: np.ndarray):
        images, labels = self._arrays()
        idx = np.asarray(idx, dtype=np.int64)
        return fit(images[idx], self.size, self.channels), (labels[idx] if labels is not None else None)


# ------------------------------------------------------------------------------------------ digits
@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]  # [1797, 1, 8, 8]
    return images, d.target.astype(np.int64)


class DigitsSource(_Source):
    """scikit-learn's bundled handwritten digits (UCI optdigits test set): 1,797 8x8 images, 0..16 grey levels
    scaled to 0..255, upscaled (bicubic) to --size. Labels 0-9."""

    def __init__(self, size=None, channels=None):
        super().__init__("digits", size, channels, (1, 8, 8))
        self.count = 1797
        self.label_names = [str(d) for d in range(10)]

    def describe(self) -> str:
        return "digits (scikit-learn load_digits)"

    def _arrays(self):
        return _digits()


def _stamp(path: Path):
    st = path.stat()
    return (st.st_mtime_ns, st.st_size)


# -------------------------------------------------------------------------------------- .npy / .npz
NPZ_IMAGES = ("images", "x", "data", "X", "arr_0")
NPZ_LABELS = ("labels", "y", "targets", "Y", "arr_1")


@functools.lru_cache(maxsize=2)
def _npy(path: str, _stamp):
    p = Path(path)
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                keys = list(z.keys())
                ik = next((k for k in NPZ_IMAGES if k in keys), None)
                if ik is None:
                    raise HvdganError(f"{p}: no images array (looked for {', '.join(NPZ_IMAGES)}; it has "
                                      f"{', '.join(keys) or 'nothing'})")
                images = z[ik]
                lk = next((k for k in NPZ_LABELS if k in keys and k != ik), None)
                labels = z[lk] if lk else None
                names = [str(n) for n in z["label_names"]] if "label_names" in keys else None
        else:
            images, labels, names = np.load(p, mmap_mode="r", allow_pickle=False), None, None
    except HvdganError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise HvdganError(f"{p}: not a readable {p.suffix} file ({exc})") from None
    images = to_nchw(images, str(p))
    labels, names = checked_labels(labels, names, len(images), str(p))
    return images, labels, names


class ArrayFileSource(_Source):
    """A .npy (images only, memory-mapped) or .npz (images, optional labels and label_names) file."""

    def __init__(self, path: Path, size=None, channels=None):
        images, labels, names = _npy(str(path), _stamp(path))
        if len(images) < 1:
            raise HvdganError(f"{path}: holds no images")
        super().__init__(str(path), size, channels, images.shape[1:])
        self.path = path
        self.count = len(images)
        self.label_names = names

    def _arrays(self):
        images, labels, _ = _npy(str(self.path), _stamp(self.path))
        return images, labels


class ArraySource:
    """In-memory images (uint8 [N, C, H, W]) and optional labels, as a source for the writer."""

    portable = False  # workers get slices, not the whole array

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None, label_names=None, name="arrays"):
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise HvdganError(f"{name}: images have dtype {images.dtype}, expected uint8 (0..255)")
        if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] < 1:
            raise HvdganError(f"{name}: images have shape {images.shape}, expected [N, C, H, W] with C 1 or 3 and N >= 1")
        self.images, self.name = images, name
        self.count, self.channels, self.height, self.width = images.shape
        self.labels, self.label_names = checked_labels(labels, label_names, self.count, name)

    def describe(self) -> str:
        return self.name

    def read(self, idx: np.ndarray):
        return self.images[idx], (self.labels[idx] if self.labels is not None else None)


class Subset:
    """Some of a source's images (`indices`, ascending): one side of `hvdgan prepare --holdout`."""

    def __init__(self, source, indices: np.ndarray, what: str):
        self.source, self.indices, self.what = source, np.sort(np.asarray(indices, dtype=np.int64)), what
        self.portable = getattr(source, "portable", False)
        self.count, self.channels, self.height, self.width = (len(self.indices), source.channels, source.height,
                                                               source.width)
        self.label_names = source.label_names

    def describe(self) -> str:
        return f"{self.source.describe()}, {self.what}"

    def read(self, idx: np.ndarray):
        return self.source.read(self.indices[np.asarray(idx, dtype=np.int64)])


def split_holdout(source, n: int, seed: int | None) -> tuple[Subset, Subset]:
    """(training, held-out): `n` images chosen at random by `seed` (None: the source's last `n`) are held out."""
    order = np.arange(source.count) if seed is None else np.random.default_rng([seed, 1]).permutation(source.count)
    held, kept = order[source.count - n:], order[:source.count - n]
    return (Subset(source, kept, f"{len(kept):,} of {source.count:,} images ({n:,} held out in holdout/)"),
            Subset(source, held, f"the {n:,} of {source.count:,} images held out"))


# ------------------------------------------------------------------------------------- image folder
def _list_images(root: Path) -> tuple[list[Path], np.ndarray | None, list[str] | None]:
    def images_in(d: Path) -> list[Path]:
        return sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()
                      and not any(part.startswith(".") for part in p.relative_to(root).parts))

    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
    if classes and not loose:
        files, labels = [], []
        for c, name in enumerate(classes):
            found = images_in(root / name)
            files += found
            labels += [c] * len(found)
        return files, np.asarray(labels, dtype=np.int64), classes
    return images_in(root), None, None


class ImageFolderSource(_Source):
    """A folder of images. With class sub-folders (root/cat/1.png, root/dog/2.jpg) the sorted sub-folder
    names become the labels, as in torchvision's ImageFolder; with images directly in root, no labels."""

    def __init__(self, path: Path, size=None, channels=None):
        files, labels, names = _list_images(path)
        if not files:
            raise HvdganError(f"{path}: no images found (looked for {', '.join(IMAGE_EXTS)}, in class sub-folders "
                              "or directly in the folder)")
        from PIL import Image

        try:
            with Image.open(files[0]) as im:
                w, h = im.size
                c = native_channels(im)
                to_8bit(im, "L" if c == 1 else "RGB", files[0])  # (a mode it cannot read fails before writing)
        except OSError as exc:
            raise HvdganError(f"{files[0]}: cannot read the image ({exc})") from None
        super().__init__(str(path), size, channels, (c, h, w))
        self.root = str(path)
        self.files = [str(p.relative_to(path)) for p in files]
        self.labels = labels
        self.count = len(files)
        if names is not None:
            unused = [n for i, n in enumerate(names) if not (labels == i).any()]
            if unused:
                raise HvdganError(f"{path}: class folder(s) without images: {', '.join(unused[:5])}")
        self.label_names = names

    def read(self, idx):
        from PIL import Image

        idx = np.asarray(idx, dtype=np.int64)
        c, s = self.channels, self.size
        out = np.empty((len(idx), c, s, s), dtype=np.uint8)
        for j, i in enumerate(idx):
            path = os.path.join(self.root, self.files[i])
            try:
                with Image.open(path) as im:
                    im = square(to_8bit(im, "L" if c == 1 else "RGB", path))
                    if im.size != (s, s):
                        im = im.resize((s, s), Image.BICUBIC)
                    arr = np.asarray(im)
            except OSError as exc:
                raise HvdganError(f"{path}: cannot read the image ({exc}); remove or replace it") from None
            out[j] = arr[None] if c == 1 else arr.transpose(2, 0, 1)
        return out, (self.labels[idx] if self.labels is not None else None)


# ----------------------------------------------------------------------------------------- dispatch
def open_source(spec: str, size: int | None = None, channels: int | None = None):
    """SOURCE of `hvdgan prepare`: `digits`, a CIFAR-10 python archive or its folder, an image folder, or a
    .npy/.npz file."""
    from .cifar import CifarSource, is_cifar_dir

    if spec == "digits":
        return DigitsSource(size, channels)
    p = Path(spec)
    if p.is_symlink() and not p.exists():
        raise HvdganError(f"{spec}: a symbolic link to nothing (or a loop of them)")
    if not p.exists():
        raise HvdganError(f"{spec}: no such file or folder; SOURCE is `digits`, cifar-10-python.tar.gz (or its "
                          "extracted folder), a folder of images, or a .npy/.npz file")
    if p.is_dir():
        if is_cifar_dir(p):
            return CifarSource(p, size, channels)
        return ImageFolderSource(p, size, channels)
    name = p.name.lower()
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return CifarSource(p, size, channels)
    if p.suffix.lower() in (".npy", ".npz"):
        return ArrayFileSource(p, size, channels)
    raise HvdganError(f"{spec}: unknown kind of source; SOURCE is `digits`, cifar-10-python.tar.gz (or its extracted "
                      "folder), a folder of images, or a .npy/.npz file")
