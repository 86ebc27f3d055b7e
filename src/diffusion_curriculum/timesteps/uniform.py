"""Uniform timesteps: the baseline every strategy is measured against (Ho et al. 2020, Algorithm 1)."""

from __future__ import annotations

import math

import torch

from .base import TimestepSampler, register


@register
class Uniform(TimestepSampler):
    """t ~ U{0, …, T−1}, weight 1.

    For a discrete process the draw is exactly ``torch.randint(0, T, (B,), generator=g)``, so a loop that
    switches to this sampler reproduces a bare loop's timesteps bit for bit. For an EDM process σ is
    log-uniform on [sigma_min, sigma_max] (the continuous analogue: uniform in ln σ). For a flow process
    t ~ U(0, 1) (``torch.rand``, clamped to [eps, 1 − eps] by the process): the rectified-flow default of Liu et
    al. 2023 (eq. 1, t uniform on [0, 1]) and diffusers' ``weighting_scheme="none"``.
    """

    name = "uniform"
    supports = ("discrete", "continuous", "flow")

    def _draw(self, batch_size, generator):
        p = self.process
        if self.kind == "discrete":
            return torch.randint(0, p.T, (batch_size,), generator=generator), None
        if self.kind == "flow":
            return p.clamp(torch.rand(batch_size, generator=generator)), None
        u = torch.rand(batch_size, generator=generator)
        lo, hi = math.log(p.sigma_min), math.log(p.sigma_max)
        return torch.exp(lo + u * (hi - lo)), None
