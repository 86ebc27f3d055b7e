"""Uniform timesteps restricted to one interval [lo, hi): the per-interval models of the difficulty analysis
(Kim et al. 2024, "Denoising Task Difficulty-based Curriculum for Training Diffusion Models", arXiv 2403.10348,
§3: one model trained per timestep interval to compare convergence speed)."""

from __future__ import annotations

import torch

from .base import TimestepSampler, check_param, is_int, register


@register
class Interval(TimestepSampler):
    """t ~ U{lo, …, hi−1}, weight 1 (discrete processes). ``hi`` defaults to T."""

    name = "interval"
    supports = ("discrete",)

    def __init__(self, process, total_steps: int | None = None, lo: int = 0, hi: int | None = None):
        super().__init__(process, total_steps)
        T = process.T
        hi = T if hi is None else hi
        check_param("lo", lo, is_int(lo) and 0 <= lo < T, f"an integer in [0, {T})")
        check_param("hi", hi, is_int(hi) and lo < hi <= T, f"an integer in ({lo}, {T}]")
        self.lo, self.hi = lo, hi

    def _draw(self, batch_size, generator):
        return torch.randint(self.lo, self.hi, (batch_size,), generator=generator), None

    def status(self):
        return {"lo": self.lo, "hi": self.hi}
