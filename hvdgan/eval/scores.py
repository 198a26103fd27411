"""The numbers of GAN evaluation, from feature vectors: Frechet distance (FID), kernel inception distance
(KID) and precision/recall. Pure NumPy/PyTorch on whatever features are given (Inception's 2048-d pool
features for FID/KID, 8x8 thumbnails for the training log's `fd8`); no Horovod, no files.

The Frechet distance needs tr sqrt(S1 S2). S1 S2 is similar to the symmetric positive semi-definite
A = S1^(1/2) S2 S1^(1/2), so tr sqrt(S1 S2) = sum of sqrt(eigenvalues of A): two symmetric
eigendecompositions (numpy.linalg.eigh), no general matrix square root (scipy.linalg.sqrtm, whose
`disp` argument is deprecated) and no complex round-off to discard.
"""

from __future__ import annotations

import numpy as np
import torch


# ------------------------------------------------------------------------------------ Frechet distance
def gaussian(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, as numpy.cov) of features [N, D], in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors [N, D], got shape {x.shape}")
    return x.mean(0), np.cov(x, rowvar=False)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues -> 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr sqrt(S1 S2) for covariance matrices S1, S2."""
    r = _sqrt_psd(s1)
    w = np.linalg.eigvalsh(r @ s2 @ r)
    return float(np.sqrt(np.clip(w, 0, None)).sum())


def frechet_distance(stats_a, stats_b) -> float:
    """Frechet distance between two Gaussians (mu, sigma):
    |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2). The one implementation for FID and the 8x8 FD."""
    (mu1, s1), (mu2, s2) = stats_a, stats_b
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt_product(s1, s2))
    return max(d, 0.0)  # (round-off can make identical Gaussians give -1e-12)


# ----------------------------------------------------------------------------------------------- KID
def _mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 with the polynomial kernel k(a, b) = (a.b / d + 1)^3 (Binkowski et al. 2018)."""
    m, d = x.shape
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    return float((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
                 + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * kxy.mean())


def kid(real, fake, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel inception distance: the unbiased MMD^2 averaged over `subsets` random subsets of
    min(subset_size, N) features drawn from each set (as torch-fidelity / clean-fid / StyleGAN2-ADA).
    Returns (mean, standard deviation over the subsets)."""
    x = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(fake), dtype=torch.float64)
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError("KID needs at least 2 features in each set")
    rng = np.random.default_rng(seed)
    values = np.array([_mmd2_unbiased(x[rng.choice(len(x), m, replace=False)],
                                      y[rng.choice(len(y), m, replace=False)]) for _ in range(subsets)])
    return float(values.mean()), float(values.std())


# ------------------------------------------------------------------------------------ precision/recall
def _kth_radius(x: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    """Distance of every row of x to its k-th nearest neighbour in x (itself excluded)."""
    out = torch.empty(len(x), dtype=x.dtype)
    for i in range(0, len(x), batch):
        d = torch.cdist(x[i:i + batch], x)
        out[i:i + batch] = d.kthvalue(k + 1, dim=1).values  # the 1st is the point itself (distance 0)
    return out


def _coverage(manifold: torch.Tensor, radii: torch.Tensor, probes: torch.Tensor, batch: int) -> float:
    """Fraction of probes inside at least one ball (centre in `manifold`, radius from `radii`)."""
    inside = 0
    for i in range(0, len(probes), batch):
        d = torch.cdist(probes[i:i + batch], manifold)
        inside += int((d <= radii.unsqueeze(0)).any(dim=1).sum())
    return inside / len(probes)


def precision_recall(real, fake, k: int = 3, batch: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): precision is the fraction of fakes
    inside the real manifold (the union of balls around each real feature reaching its k-th nearest
    real neighbour), recall the fraction of reals inside the fake manifold."""
    x = torch.as_tensor(np.asarray(real), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(fake), dtype=torch.float32)
    if min(len(x), len(y)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} features in each set")
    precision = _coverage(x, _kth_radius(x, k, batch), y, batch)
    recall = _coverage(y, _kth_radius(y, k, batch), x, batch)
    return precision, recall


def compute(real, fake, metrics=("fid",), real_stats=None, kid_subsets: int = 100, kid_subset_size: int = 1000,
            seed: int = 0) -> dict:
    """The chosen metrics of two feature sets [N, D] as a flat dict: fid, kid, kid_std, precision, recall."""
    out = {}
    if "fid" in metrics:
        out["fid"] = frechet_distance(real_stats or gaussian(real), gaussian(fake))
    if "kid" in metrics:
        out["kid"], out["kid_std"] = kid(real, fake, kid_subsets, kid_subset_size, seed)
    if "pr" in metrics:
        out["precision"], out["recall"] = precision_recall(real, fake)
    return out
