"""The torch side of the data: what the training loop does to the reader's uint8 batches.

(It calls only tensor methods, so importing it does not import torch: `prepare`'s workers import the package.)
"""

from __future__ import annotations


def to_float(images, device):
    """uint8 [B, C, H, W] -> float in [-1, 1] on `device`: move the bytes first (4x less to copy), then
    convert there. Call it on the training device, once per batch."""
    return images.to(device, non_blocking=True).float().div_(127.5).sub_(1)
