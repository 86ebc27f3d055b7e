"""Uniform timesteps restricted to one interval [lo, hi): the per-interval models of the difficulty analysis
(Kim et al. 2024, "Denoising Task Difficulty-based Curriculum for Training Diffusion Models", arXiv 2403.10348,
§3: one model trained per timestep interval to compare convergence speed)."""

from __future__ import annotations

import torch

from .base import TimestepSampler, check_param, is_int, is_number, register


@register
class Interval(TimestepSampler):
    """t ~ U{lo, …, hi−1}, weight 1, on a discrete process (``hi`` defaults to T); t ~ U(lo, hi) on a flow
    process, with lo and hi numbers in [0, 1] (``hi`` defaults to 1; clamped to [eps, 1 − eps])."""

    name = "interval"
    supports = ("discrete", "flow")

    def __init__(
        self, process, total_steps: int | None = None, lo: int | float = 0, hi: int | float | None = None
    ):
        super().__init__(process, total_steps)
        if self.kind == "flow":
            hi = 1.0 if hi is None else hi
            check_param("lo", lo, is_number(lo) and 0 <= lo < 1, "a number in [0, 1) on a flow process")
            check_param("hi", hi, is_number(hi) and lo < hi <= 1, f"a number in ({lo}, 1] on a flow process")
            self.lo, self.hi = float(lo), float(hi)
            return
        T = process.T
        hi = T if hi is None else hi
        check_param("lo", lo, is_int(lo) and 0 <= lo < T, f"an integer in [0, {T})")
        check_param("hi", hi, is_int(hi) and lo < hi <= T, f"an integer in ({lo}, {T}]")
        self.lo, self.hi = lo, hi

    def _draw(self, batch_size, generator):
        if self.kind == "flow":
            u = torch.rand(batch_size, generator=generator)
            return self.process.clamp(self.lo + (self.hi - self.lo) * u), None
        return torch.randint(self.lo, self.hi, (batch_size,), generator=generator), None

    def status(self):
        return {"lo": self.lo, "hi": self.hi}
