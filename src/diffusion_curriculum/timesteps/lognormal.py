"""The ``lognormal`` strategy: EDM's fixed log-normal density of noise levels (Karras et al. 2022)."""

from __future__ import annotations

import torch

from ..process import kind_of
from .base import TimestepSampler, check_param, is_number, register


def nearest_timestep(process, sigma: torch.Tensor) -> torch.Tensor:
    """Map VE noise levels σ to the discrete timestep whose σ(t) = sqrt((1−ᾱ_t)/ᾱ_t) is nearest in ln σ."""
    log_sig_t = (0.5 * torch.log((1 - process.alphas_cumprod) / process.alphas_cumprod)).float()
    ls = sigma.float().log()
    idx = torch.searchsorted(log_sig_t, ls).clamp(1, process.T - 1)
    left, right = log_sig_t[idx - 1], log_sig_t[idx]
    return torch.where((ls - left).abs() <= (right - ls).abs(), idx - 1, idx)


@register
class LogNormal(TimestepSampler):
    """ln σ ~ N(P_mean, P_std²) (Karras et al. 2022, Table 1, "Training": P_mean = −1.2, P_std = 1.2).

    On an :class:`~diffusion_curriculum.process.EDMProcess` the defaults come from the process. On a
    discrete process each σ is mapped to the timestep with the nearest σ(t) in ln σ, so the same density can
    drive a DDPM-style loop. On a flow process σ is its EDM-equivalent level σ = t'/(1 − t'), so
    t' = σ/(1 + σ) = sigmoid(ln σ) — the logit-normal density of SD3 with m = P_mean, s = P_std — mapped back
    through the process's shift (t = unshifted(t')) so the *noised sample* has EDM's σ. Weight 1 (EDM's λ(σ) is
    a *weighting*, not part of the draw).
    """

    name = "lognormal"
    supports = ("discrete", "continuous", "flow")

    def __init__(self, process, total_steps=None, P_mean: float | None = None, P_std: float | None = None):
        super().__init__(process, total_steps)
        P_mean = getattr(process, "P_mean", -1.2) if P_mean is None else P_mean
        P_std = getattr(process, "P_std", 1.2) if P_std is None else P_std
        check_param("P_mean", P_mean, is_number(P_mean), "a finite number")
        check_param("P_std", P_std, is_number(P_std) and P_std > 0, "a number > 0")
        self.P_mean, self.P_std = float(P_mean), float(P_std)

    def _draw(self, batch_size, generator):
        log_sigma = self.P_mean + self.P_std * torch.randn(batch_size, generator=generator)
        return level_of_log_sigma(self.process, log_sigma), None


def level_of_log_sigma(process, log_sigma: torch.Tensor) -> torch.Tensor:
    """The noise level of ``process`` with EDM-equivalent noise ln σ (see :class:`LogNormal`): σ itself on an EDM
    process, the timestep with the nearest σ(t) on a discrete one, t = unshifted(sigmoid(ln σ)) on a flow one."""
    kind = kind_of(process)
    if kind == "flow":
        return process.unshifted(torch.sigmoid(log_sigma))
    sigma = torch.exp(log_sigma)
    if kind == "continuous":
        return sigma
    return nearest_timestep(process, sigma)
