"""Distances between sets of low-dimensional points (the toy 2-D datasets, or any ``[N, D]`` data).

* Sliced Wasserstein distance (Bonneel et al. 2015, "Sliced and Radon Wasserstein Barycenters of Measures";
  Deshpande et al. 2018, "Generative Modeling using the Sliced Wasserstein Distance"): :func:`sliced_wasserstein`.
* Unbiased squared MMD with a sum of RBF kernels (Gretton et al. 2012, "A Kernel Two-Sample Test", Lemma 6 /
  Eq. 3): :func:`mmd`, and its parts :func:`kernel_sum` / :func:`mmd_from_sums` for a precomputed reference.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["check_bandwidths", "kernel_sum", "mmd", "mmd_from_sums", "sliced_wasserstein"]


def _points(x: Tensor | np.ndarray, name: str) -> Tensor:
    t = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if t.dim() != 2 or t.shape[0] < 1:
        raise ValueError(f"{name} must be points [N, D] with N >= 1, got shape {tuple(t.shape)}")
    return t


def _quantiles(sorted_vals: Tensor, levels: Tensor) -> Tensor:
    """Linear interpolation of the empirical quantile function: ``sorted_vals`` [N, P] at ``levels`` [K]."""
    n = sorted_vals.shape[0]
    pos = (levels * n - 0.5).clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    frac = (pos - lo.to(pos.dtype)).unsqueeze(1)
    return sorted_vals[lo] * (1 - frac) + sorted_vals[hi] * frac


def sliced_wasserstein(
    x: Tensor | np.ndarray, y: Tensor | np.ndarray, n_projections: int = 256, seed: int = 0, p: int = 2
) -> float:
    """Sliced p-Wasserstein distance ``SW_p = (E_θ W_p^p(θ#x, θ#y))^{1/p}`` (Bonneel et al. 2015, §2;
    Deshpande et al. 2018, §3), averaged over ``n_projections`` random unit directions θ.

    Default ``p = 2`` (the sliced 2-Wasserstein: the root of the mean squared 1-D W2); the result is in the
    units of the data. Each 1-D distance matches sorted projections; for unequal sample sizes both quantile
    functions are interpolated linearly at ``max(N, M)`` common levels ``(i + ½)/K``. The directions come
    from a ``torch.Generator`` seeded with ``seed`` (normal vectors, normalised), so the value is
    deterministic.
    """
    a, b = _points(x, "x"), _points(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"dimensions differ: x has {a.shape[1]}, y has {b.shape[1]}")
    if p < 1:
        raise ValueError(f"p={p} must be at least 1")
    g = torch.Generator().manual_seed(int(seed))
    theta = torch.randn(a.shape[1], int(n_projections), generator=g, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    pa, _ = (a @ theta).sort(dim=0)
    pb, _ = (b @ theta).sort(dim=0)
    if pa.shape[0] != pb.shape[0]:
        k = max(pa.shape[0], pb.shape[0])
        levels = (torch.arange(k, dtype=torch.float64) + 0.5) / k
        pa, pb = _quantiles(pa, levels), _quantiles(pb, levels)
    per_direction = (pa - pb).abs().pow(p).mean(dim=0)  # W_p^p along each θ
    return float(per_direction.mean().pow(1.0 / p))


def kernel_sum(a: Tensor, b: Tensor, bandwidths: tuple[float, ...], chunk_size: int = 1024) -> float:
    """``Σ_ij Σ_σ exp(−‖a_i − b_j‖² / (2σ²))`` in row chunks (memory ``O(chunk_size · len(b))``)."""
    total = 0.0
    for chunk in a.split(chunk_size):
        d2 = torch.cdist(chunk, b).pow_(2)
        for sigma in bandwidths:
            total += float(torch.exp(d2 * (-1.0 / (2.0 * float(sigma) ** 2))).sum())
    return total


def check_bandwidths(bandwidths) -> tuple[float, ...]:
    """The RBF ``bandwidths`` as a tuple of floats; ``ValueError`` unless it is a non-empty list of numbers > 0."""
    bw = tuple(float(s) for s in bandwidths)
    if not bw or any(not s > 0 for s in bw):
        raise ValueError(f"bandwidths={bandwidths!r} must be a non-empty list of positive numbers")
    return bw


def mmd_from_sums(kxx: float, kyy: float, kxy: float, m: int, n: int, n_kernels: int) -> float:
    """``MMD²_u`` of :func:`mmd` from the three :func:`kernel_sum` totals (``m`` x-samples, ``n`` y-samples,
    ``n_kernels`` bandwidths), so a fixed reference set's ``kyy`` can be computed once."""
    # the diagonal of each within-set sum is exactly one per kernel per sample: remove it (unbiased estimate)
    xx = (kxx - m * n_kernels) / (m * (m - 1))
    yy = (kyy - n * n_kernels) / (n * (n - 1))
    return float(xx + yy - 2.0 * kxy / (m * n))


def mmd(
    x: Tensor | np.ndarray, y: Tensor | np.ndarray, bandwidths: tuple[float, ...] = (0.1, 0.5, 1, 2, 5)
) -> float:
    """Unbiased squared maximum mean discrepancy ``MMD²_u`` (Gretton et al. 2012, Lemma 6 / Eq. 3).

    ``MMD²_u = 1/(m(m−1)) Σ_{i≠j} k(x_i, x_j) + 1/(n(n−1)) Σ_{i≠j} k(y_i, y_j)
    − 2/(mn) Σ_{i,j} k(x_i, y_j)`` with the kernel a sum of Gaussian RBFs
    ``k(u, v) = Σ_σ exp(−‖u − v‖² / (2σ²))`` over ``bandwidths``
    (a sum of characteristic kernels is characteristic). Being unbiased, it can be slightly negative when
    both samples come from the same distribution. Float64, chunked pairwise distances.
    """
    a, b = _points(x, "x"), _points(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"dimensions differ: x has {a.shape[1]}, y has {b.shape[1]}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("mmd needs at least two samples in each set")
    bw = check_bandwidths(bandwidths)
    kxx, kyy, kxy = kernel_sum(a, a, bw), kernel_sum(b, b, bw), kernel_sum(a, b, bw)
    return mmd_from_sums(kxx, kyy, kxy, a.shape[0], b.shape[0], len(bw))
