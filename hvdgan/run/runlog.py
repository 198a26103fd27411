"""What a user looks at: metrics.jsonl (this module is its one reader and writer: one JSON record a line,
torn lines dropped), TensorBoard events, sample grids, the loss plot, and a simple quality measure (the
Frechet distance of 8x8-downsampled images, with hvdgan.eval.scores' formula)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..eval.scores import frechet_distance, gaussian  # noqa: F401  (the one Frechet distance, shared with FID)

log = logging.getLogger("hvdgan")


# ------------------------------------------------------------------------ Frechet distance (8x8)
def features8(images: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1], [N, C, H, W] -> grey 8x8 thumbnails as [N, 64] float64 vectors."""
    x = images.detach().float().cpu()
    if x.shape[1] > 1:
        x = x.mean(1, keepdim=True)
    x = F.adaptive_avg_pool2d(x, 8)
    return x.flatten(1).double().numpy()


# --------------------------------------------------------------------------------------- the run log
class RunLog:
    """Rank 0's writer of metrics.jsonl (one JSON object per logged step) and TensorBoard scalars."""

    def __init__(self, out: Path, tensorboard: bool = True, resume_step: int = 0):
        self.out = Path(out)
        self.path = self.out / "metrics.jsonl"
        if not resume_step and self.path.exists():
            self.path.unlink()  # (on resume, history.abandon_after has already moved later records aside)
        self.file = open(self.path, "a", buffering=1)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
            except ImportError:  # tensorboard not installed: metrics.jsonl is the record
                self.tb = None

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(key, value, record["step"])

    def image(self, tag: str, grid: torch.Tensor, step: int) -> None:
        if self.tb is not None:
            self.tb.add_image(tag, grid, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def read_records(path: Path, warn: bool = True) -> list[dict]:
    """metrics.jsonl as a list of records; lines that do not parse (a torn last line) are dropped, with a
    warning naming the file and the line."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            if warn:
                log.warning("%s:%d: dropped a torn or unreadable record (%r)", path, number, line[:80])
            continue
        records.append(record)
    return records


def write_records(path: Path, records: list[dict]) -> None:
    """Rewrite `path` with `records` atomically (a temporary file, then a rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(path)


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl's records, torn lines dropped silently."""
    return read_records(path, warn=False)


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> torch.Tensor:
    """Save images in [-1, 1] as one PNG grid (torchvision's make_grid + save_image); returns the grid."""
    from torchvision.utils import make_grid, save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    grid = make_grid(images.detach().float().cpu(), nrow=nrow, normalize=True, value_range=(-1, 1), padding=2)
    save_image(grid, path)
    return grid


def plot_losses(metrics_path: Path, out_png: Path) -> Path | None:
    """Loss and D-output curves of a run, from its metrics.jsonl."""
    fig = loss_figure(read_metrics(metrics_path))
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def loss_figure(every: list[dict]):
    """The plot of metrics.jsonl's records (None without a logged step): losses with the 8x8 Frechet distance
    on a second axis; D's outputs; quality: Inception FID with precision, recall and the samples' diversity
    (collapse.py, its warning level dotted) on a second axis. One legend per panel names every line."""
    from .collapse import COLLAPSE_FRACTION

    records = [r for r in every if "loss_d" in r]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key):
        return list(zip(*[(r["step"], r[key]) for r in every if key in r])) or [[], []]

    steps = [r["step"] for r in records]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4))
    ax1.plot(steps, [r["loss_d"] for r in records], label="D loss")
    ax1.plot(steps, [r["loss_g"] for r in records], label="G loss")
    ax1.set_xlabel("step"), ax1.set_title("losses (mean over ranks)")
    ax2.plot(steps, [r["d_real"] for r in records], label="D(x)")
    ax2.plot(steps, [r["d_fake"] for r in records], label="D(G(z))")
    ax2.set_xlabel("step"), ax2.set_ylim(0, 1), ax2.set_title("discriminator outputs")
    ax3.set_xlabel("step"), ax3.set_ylabel("FID"), ax3.set_title("sample quality")
    if series("fid")[0]:
        ax3.plot(*series("fid"), "rs-", label="FID (Inception)")
    ax2.legend(loc="best")
    if series("fd8")[0]:  # on a second axis, drawn over the first: the panel's one legend goes there
        top = ax1.twinx()
        top.plot(*series("fd8"), "k.--", label="FD (8x8)")
        top.set_ylabel("FD (8x8)")
        top.legend(handles=[*ax1.get_lines(), *top.get_lines()], loc="best")
    else:
        ax1.legend(loc="best")
    right = ax3.twinx()  # ratios, 0 to 1 and a little over
    for key, style, label in (("precision", "b^-", "precision"), ("recall", "gv-", "recall"),
                              ("diversity", "m.-", "diversity / real")):
        if series(key)[0]:
            right.plot(*series(key), style, label=label)
    right.axhline(COLLAPSE_FRACTION, color="m", linestyle=":", label="collapse warning")
    right.set_ylim(0, max([1.2, *series("diversity")[1]]))
    right.set_ylabel("precision, recall, diversity (ratios)")
    right.legend(handles=[*ax3.get_lines(), *right.get_lines()], loc="best", fontsize="small")
    fig.tight_layout()
    return fig
