"""Image transforms for the sources: to [N, C, H, W], channel conversion, centre crop and resize.

Images that are not square are centre-cropped to a square, then resized with PIL's bicubic filter
(antialiased when shrinking). RGB -> grey uses ITU-R 601 luma (as PIL's convert("L")); grey -> RGB repeats
the channel. The size is the caller's (`hvdgan prepare`'s default: hvdgan.models.default_image_size).
"""

from __future__ import annotations

import numpy as np

from ..errors import HvdganError


def to_nchw(images: np.ndarray, what: str) -> np.ndarray:
    """uint8 [N, H, W], [N, H, W, C] or [N, C, H, W] (C 1 or 3) -> [N, C, H, W]. Channels-last is assumed
    when the last axis has 1 or 3 entries and the second has not."""
    if images.dtype != np.uint8:
        raise HvdganError(f"{what}: images have dtype {images.dtype}, expected uint8 (0..255); convert them first, "
                          "e.g. (x * 255).round().clip(0, 255).astype('uint8')")
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4:
        if images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
            return images.transpose(0, 3, 1, 2)
        if images.shape[1] in (1, 3):
            return images
        if images.shape[-1] in (1, 3):
            return images.transpose(0, 3, 1, 2)
    raise HvdganError(f"{what}: images have shape {images.shape}; expected [N, H, W], [N, H, W, C] or [N, C, H, W] "
                      "with C = 1 or 3")


def _grey(rgb: np.ndarray) -> np.ndarray:
    """[N, 3, H, W] -> [N, 1, H, W] with PIL's integer ITU-R 601 luma."""
    r, g, b = (rgb[:, i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)[:, None]


def fit(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """uint8 [N, C, H, W] -> uint8 [N, channels, size, size] (centre crop to square, bicubic resize)."""
    if images.shape[1] != channels:
        images = _grey(images) if channels == 1 else np.repeat(images, 3, axis=1)
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return np.ascontiguousarray(images)
    from PIL import Image

    out = np.empty((n, c, size, size), dtype=np.uint8)
    for j in range(n):
        hwc = images[j].transpose(1, 2, 0)
        im = Image.fromarray(hwc[:, :, 0] if c == 1 else np.ascontiguousarray(hwc), "L" if c == 1 else "RGB")
        arr = np.asarray(square(im).resize((size, size), Image.BICUBIC))
        out[j] = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    return out


def square(im):
    """A PIL image centre-cropped to a square."""
    w, h = im.size
    if w == h:
        return im
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return im.crop((left, top, left + s, top + s))
