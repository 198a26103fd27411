"""Mode collapse, watched while training: how much G's samples differ from each other, against how much real
images do (docs/evaluation.md, "Collapse").

The statistic is the mean pairwise distance of the 8x8 grey thumbnails (runlog.features8, the space of the
8x8 Frechet distance), per class for a conditional G: a G that ignores z draws one image per class, whose
distance to itself is 0, however good that image looks. Its ratio to the real images' own spread, for the
class where it is lowest, is logged as `diversity` at every sample step. The log warns when it falls below
COLLAPSE_FRACTION after having been above it, and at the last step whenever it is below: an untrained G
draws nearly one image per class too (its first few hundred steps), and that is no collapse. The samples
are the sample step's fixed-seed ones: nothing here draws from a random stream (a resumed run stays exact).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .runlog import features8

log = logging.getLogger("hvdgan")

# Where healthy and collapsed runs part (docs/benchmarks.md, "Collapse detection"): the warning sits between.
COLLAPSE_FRACTION = 0.35


def spread(feats: np.ndarray) -> float:
    """The mean distance between two different rows of `feats` [N, D] (N >= 2), from one Gram matrix (hvdgan
    itself does not depend on SciPy's pdist)."""
    sq = (feats * feats).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * feats @ feats.T, 0.0)
    n = len(feats)
    return float(np.sqrt(d2).sum() / (n * (n - 1)))


def spread_by_class(images: torch.Tensor, labels: torch.Tensor | None) -> dict[int, float]:
    """{class: spread} of images in [-1, 1] (one group, class -1, without labels); classes with fewer than
    two images are left out."""
    feats = features8(images)
    if labels is None:
        return {-1: spread(feats)} if len(feats) >= 2 else {}
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    return {int(c): spread(feats[labels == c]) for c in np.unique(labels) if (labels == c).sum() >= 2}


class CollapseWatch:
    """The real images' spread per class, once; then, for G's samples at each sample step, the lowest ratio
    of their spread to the real one, and a warning when it is under COLLAPSE_FRACTION."""

    def __init__(self, real: torch.Tensor, real_labels: torch.Tensor | None, class_names: list[str] | None = None):
        self.real = spread_by_class(real, real_labels)
        self.names = class_names
        self.was_diverse = False  # above COLLAPSE_FRACTION at a sample step of this process

    def check(self, fakes: torch.Tensor, labels: torch.Tensor | None, step: int, last: bool = False) -> dict:
        """{"diversity": the lowest ratio, "diversity_class": its class (conditional G only)}."""
        ratios = {c: s / self.real[c] for c, s in spread_by_class(fakes, labels).items()
                  if self.real.get(c, 0) > 0}
        if not ratios:
            return {}
        worst = min(ratios, key=ratios.get)
        out = {"diversity": round(ratios[worst], 4)}
        where = ""
        if worst >= 0:
            out["diversity_class"] = worst
            where = f" of class {self.names[worst] if self.names else worst}"
        if ratios[worst] >= COLLAPSE_FRACTION:
            self.was_diverse = True
        elif self.was_diverse or last:
            log.warning("step %d: G's samples%s differ %.3gx as much as real images do (a warning below %.3g): "
                        "G may be collapsing to a few images (--mode-seeking 1 is one remedy); see "
                        "docs/evaluation.md, \"Collapse\"", step, where, ratios[worst], COLLAPSE_FRACTION)
        return out
