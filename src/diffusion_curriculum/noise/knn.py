"""``knn``: the nearest of k Gaussian candidates per sample (Improved Immiscible Diffusion, arXiv 2505.18521, §3:
draw k noises per image and train on the one closest to it).

For each sample x0 draw ε_1 … ε_k ~ N(0, I) and keep

    metric "l2" (the paper's):    argmin_j ‖x0 − ε_j‖²  = argmin_j (‖ε_j‖² − 2⟨x0, ε_j⟩)
    metric "angle" [project]:     argmax_j ⟨x0, ε_j⟩ / ‖ε_j‖

The "l2" choice prefers candidates of small norm as well as ones pointing towards x0, so the kept noise is no
longer N(0, I) even in norm (E‖ε‖²/D falls below 1), and x_T at the end of the forward process no longer matches
the N(0, I) that sampling starts from. The "angle" variant chooses by direction alone; for a Gaussian the norm is
independent of the direction, so the kept noise's norm stays χ_D-distributed exactly (docs/methods.md, "Noise
assignment"). The candidates are drawn one after another and the best is kept on the device with ``torch.where``:
no host read, and memory for a few noise-sized temporaries of the batch whatever k is.
"""

from __future__ import annotations

import torch

from ..checks import check_value, is_int
from .base import NoiseAssigner, register

METRICS = ("l2", "angle")


@register
class Knn(NoiseAssigner):
    """The nearest of ``k`` candidates per sample, by ``metric`` (``l2`` or ``angle``, see the module)."""

    name = "knn"

    def __init__(self, k: int = 4, metric: str = "l2"):
        check_value("noise.k", k, is_int(k) and 1 <= k <= 1024, "an integer in [1, 1024]")
        check_value("noise.metric", metric, metric in METRICS, "one of " + ", ".join(METRICS))
        self.k, self.metric = int(k), metric

    def _score(self, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Lower is nearer, per sample ([B], float32)."""
        xf, ef = x0.flatten(1).float(), eps.flatten(1).float()
        dot = (xf * ef).sum(1)
        if self.metric == "l2":
            return ef.pow(2).sum(1) - 2 * dot  # ‖x0 − ε‖² − ‖x0‖²
        return -dot / ef.norm(dim=1).clamp_min(1e-12)

    def _draw(self, x0, generator):
        best = self._randn(x0.shape, x0, generator)
        best_score = self._score(x0, best)
        shape = (-1, *([1] * (x0.dim() - 1)))
        for _ in range(self.k - 1):
            cand = self._randn(x0.shape, x0, generator)
            score = self._score(x0, cand)
            better = score < best_score
            best = torch.where(better.view(shape), cand, best)
            best_score = torch.where(better, score, best_score)
        return best

    def __repr__(self) -> str:
        return f"Knn(k={self.k}, metric={self.metric!r})"
