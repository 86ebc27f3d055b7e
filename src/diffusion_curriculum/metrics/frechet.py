"""Fréchet distance between Gaussians fitted to two feature sets (the FID formula).

Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium":
``FD = ‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½)``. Which features go in is the caller's choice (the library's own
feature nets, Inception-v3 pool3); this module only does the float64 linear algebra.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.linalg
from torch import Tensor

__all__ = ["fd_from_stats", "frechet_distance", "gaussian_stats"]


def _as_float64(x: Tensor | np.ndarray, name: str) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2:
        raise ValueError(f"{name} must be a 2-D array [N, D] with N >= 2, got shape {tuple(a.shape)}")
    return a


def frechet_distance(feat_a: Tensor | np.ndarray, feat_b: Tensor | np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N, D]`` and ``[M, D]``.

    Heusel et al. 2017 (the FID formula): ``FD = ‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½)``, with means and
    (unbiased, ``N − 1``) covariances in float64. The matrix square root is ``scipy.linalg.sqrtm``:

    * when both sets have at least ``D`` samples, ``sqrtm(Σa Σb)`` as in pytorch-fid; if the product is
      singular (the result is not finite) or the root has an imaginary part above ``1e-3`` (rounding on a
      nearly singular product), it is recomputed with ``eps·I`` added to both covariances, the usual fix;
      the real part is then taken (the eigenvalues of ``Σa Σb`` are real and ≥ 0, so any imaginary part is
      rounding error);
    * when a set has fewer samples than dimensions (e.g. a few images on 2048-d Inception features), the
      covariances are low rank; with centred features ``A`` (``[N, D]``) and ``B``, the non-zero eigenvalues
      of ``Σa Σb`` are those of ``K Kᵀ`` with ``K = A Bᵀ / √((N−1)(M−1))`` (an ``N x M`` matrix), so
      ``Tr (Σa Σb)^½ = Tr sqrtm(K Kᵀ)`` exactly — smaller, and free of the singular ``D x D`` product.
    """
    a, b = _as_float64(feat_a, "feat_a"), _as_float64(feat_b, "feat_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: feat_a has {a.shape[1]}, feat_b has {b.shape[1]}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    n, m, d = a.shape[0], b.shape[0], a.shape[1]
    if min(n, m) >= d:
        return fd_from_stats(*gaussian_stats(a), *gaussian_stats(b), eps=eps)
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = a - mu_a, b - mu_b
    trace_a = float((ca * ca).sum() / (n - 1))
    trace_b = float((cb * cb).sum() / (m - 1))
    k = (ca @ cb.T) / math.sqrt((n - 1) * (m - 1))
    diff = mu_a - mu_b
    return float(diff @ diff + trace_a + trace_b - 2.0 * _trace_sqrtm(k @ k.T))


def gaussian_stats(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased (``N − 1``) covariance of float64 features ``[N, D]``: the Gaussian FID fits."""
    mu = a.mean(0)
    c = a - mu
    return mu, (c.T @ c) / (a.shape[0] - 1)


def fd_from_stats(
    mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray, eps: float = 1e-6
) -> float:
    """Heusel et al. 2017's FID formula from means and covariances (``sqrtm(Σa Σb)``, ``eps·I`` retry).

    For callers that keep one side's statistics (an evaluator's real data) and need at least ``D`` samples on
    both sides; :func:`frechet_distance` picks this or the low-rank form itself.
    """
    covmean = _sqrtm(sigma_a @ sigma_b)
    if covmean is None:
        offset = eps * np.eye(len(mu_a))
        covmean = _sqrtm((sigma_a + offset) @ (sigma_b + offset), force=True)
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.trace(covmean))


def _sqrtm(mat: np.ndarray, force: bool = False) -> np.ndarray | None:
    """Real part of ``sqrtm(mat)``; ``None`` when it is unusable (non-finite, large imaginary part)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on singular input; we check the result instead
        root = scipy.linalg.sqrtm(mat)
    root = np.asarray(root)
    if not np.isfinite(root).all():
        if force:
            raise ValueError("the covariance product has no finite square root even with an eps offset")
        return None
    if np.iscomplexobj(root):
        if np.abs(root.imag).max() > 1e-3 and not force:
            return None
        root = root.real
    return root


def _trace_sqrtm(mat: np.ndarray) -> float:
    root = _sqrtm(mat)
    if root is None:
        root = _sqrtm(mat + 1e-10 * np.trace(mat) / len(mat) * np.eye(len(mat)), force=True)
    return float(np.trace(root))
