"""The ``logit-normal`` strategy: the logit-normal timestep density of rectified-flow / SD3 training."""

from __future__ import annotations

import torch

from .base import TimestepSampler, check_param, is_number, register


@register
class LogitNormal(TimestepSampler):
    """u = sigmoid(n), n ~ N(mean, std²) (Esser et al. 2024, "Scaling Rectified Flow Transformers", eq. 19,
    logit-normal sampling; defaults mean 0, std 1: SD3's default, diffusers' ``weighting_scheme="logit_normal"``).

    On a flow process t = u (clamped to [eps, 1 − eps]; the process's shift then maps it, as diffusers indexes its
    shifted sigmas with u); on a discrete process t = ⌊u·T⌋. EDM processes are refused (their σ has no [0, 1]
    axis; the ``lognormal`` sampler is EDM's own density)."""

    name = "logit-normal"
    supports = ("discrete", "flow")

    def __init__(self, process, total_steps=None, mean: float = 0.0, std: float = 1.0):
        super().__init__(process, total_steps)
        check_param("mean", mean, is_number(mean), "a finite number")
        check_param("std", std, is_number(std) and std > 0, "a number > 0")
        self.mean, self.std = float(mean), float(std)

    def _draw(self, batch_size, generator):
        u = torch.sigmoid(self.mean + self.std * torch.randn(batch_size, generator=generator))
        if self.kind == "flow":
            return self.process.clamp(u), None
        return (u * self.process.T).long().clamp_(0, self.process.T - 1), None
