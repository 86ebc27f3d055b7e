"""Improved precision and recall of generated samples (Kynkäänniemi et al. 2019, "Improved Precision and Recall
Metric for Assessing Generative Models", §2: the k-NN manifold f(φ, Φ) and the precision/recall formulas)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["knn_radii", "precision_recall"]


def _as_float_tensor(x: Tensor | np.ndarray, name: str) -> Tensor:
    t = torch.as_tensor(x).detach().to("cpu")
    if t.dim() != 2:
        raise ValueError(f"{name} must be [N, D], got shape {tuple(t.shape)}")
    return t.float() if t.dtype != torch.float64 else t


@torch.no_grad()
def knn_radii(features: Tensor | np.ndarray, k: int = 3, chunk_size: int = 1024) -> Tensor:
    """Distance from every sample to its ``k``-th nearest neighbour in the same set (itself excluded).

    The radius of the hypersphere around each sample in Kynkäänniemi et al. 2019, §2 (``NN_k(φ)``).
    Distances are computed in row chunks of ``chunk_size`` (``torch.cdist``), so memory stays
    ``O(chunk_size · N)``.
    """
    f = _as_float_tensor(features, "features")
    n = f.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k={k} must be at least 1 and smaller than the number of samples ({n})")
    radii = []
    for chunk in f.split(chunk_size):
        d = torch.cdist(chunk, f)
        # the k+1 smallest include the sample itself (distance 0)
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


@torch.no_grad()
def _coverage(query: Tensor, ref: Tensor, ref_radii: Tensor, chunk_size: int) -> float:
    """Fraction of ``query`` rows within ``ref_radii[j]`` of some ``ref[j]`` (Kynkäänniemi's f(φ, Φ))."""
    inside = []
    for chunk in query.split(chunk_size):
        d = torch.cdist(chunk, ref)
        inside.append((d <= ref_radii.unsqueeze(0)).any(dim=1))
    return float(torch.cat(inside).float().mean())


def precision_recall(
    real_features: Tensor | np.ndarray,
    fake_features: Tensor | np.ndarray,
    k: int = 3,
    chunk_size: int = 1024,
    real_radii: Tensor | None = None,
    fake_radii: Tensor | None = None,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, §2) on feature sets ``[N, D]``.

    Each set's manifold is the union of balls around its samples with radius the distance to the sample's
    ``k``-th nearest neighbour (k = 3 as in the paper). Precision is the fraction of generated samples
    inside the real manifold, recall the fraction of real samples inside the generated manifold. Radii may
    be passed precomputed (:func:`knn_radii`); distances are computed in chunks (``torch.cdist``).
    """
    real = _as_float_tensor(real_features, "real_features")
    fake = _as_float_tensor(fake_features, "fake_features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: real has {real.shape[1]}, fake has {fake.shape[1]}")
    if real.dtype != fake.dtype:
        real, fake = real.double(), fake.double()
    r_real = knn_radii(real, k, chunk_size) if real_radii is None else real_radii.to(real.dtype)
    r_fake = knn_radii(fake, k, chunk_size) if fake_radii is None else fake_radii.to(fake.dtype)
    precision = _coverage(fake, real, r_real, chunk_size)
    recall = _coverage(real, fake, r_fake, chunk_size)
    return precision, recall
