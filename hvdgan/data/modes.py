"""A picture file's pixels as 8-bit grey (L) or RGB, whatever Pillow's mode for it, for `hvdgan prepare`.

Pillow's own `convert("L")` clips the wider modes instead of scaling them (a 16-bit PNG, mode I;16 or I,
comes out all 255) and drops an alpha channel, showing whatever colour the transparent pixels happen to
hold. Here:

    I;16 (and I;16B/L/N)   16-bit grey: scaled to 0..255 (x * 255 / 65535, rounded)
    I                      32-bit integers: taken as 16-bit grey when every pixel is in 0..65535 (how Pillow
                           opens 16-bit PNGs and TIFFs), else refused
    F                      floating point: refused (its range, 0..1 or 0..255 or other, is not in the file)
    LA, RGBA, PA, P with a transparent colour
                           composited over white (transparent pixels become white, as on a page)
    1, P, CMYK, YCbCr, ... Pillow's conversion
    anything Pillow cannot convert to RGB (e.g. LAB): refused

A refusal is an HvdganError naming the file and its mode.
"""

from __future__ import annotations

import numpy as np

from ..errors import HvdganError

GREY = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def native_channels(im) -> int:
    """1 for the grey modes (with or without alpha), else 3."""
    return 1 if im.mode in GREY else 3


def to_8bit(im, mode: str, path) -> "Image.Image":  # noqa: F821  (PIL, imported when used)
    """`im` (any mode) as `mode`, "L" or "RGB", scaled and composited as the module says."""
    from PIL import Image

    if im.mode == "F":
        raise HvdganError(f"{path}: mode F (32-bit floating point) images are not read: the file does not say "
                          "which values are black and white; save it as 8- or 16-bit first")
    if im.mode in WIDE_GREY:
        im = Image.fromarray(_scaled16(np.asarray(im), im.mode, path), "L")
    elif im.mode in ("LA", "La", "PA", "RGBA", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba).convert("L" if im.mode in ("LA", "La") else "RGB")
    elif im.mode not in ("L", "RGB"):
        try:
            im = im.convert("RGB")
        except ValueError:
            raise HvdganError(f"{path}: mode {im.mode} images are not read (Pillow cannot convert it to RGB); "
                              "save it as RGB or grey first") from None
    return im if im.mode == mode else im.convert(mode)


def _scaled16(a: np.ndarray, mode: str, path) -> np.ndarray:
    """16-bit grey values (any integer dtype) to 0..255, rounded: 65535 -> 255, 257 * k -> k."""
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    if lo < 0 or hi > 65535:
        raise HvdganError(f"{path}: mode {mode} pixels from {lo} to {hi}: hvdgan prepare reads 8- and 16-bit grey "
                          "(0..65535); save it as 8- or 16-bit first")
    return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
