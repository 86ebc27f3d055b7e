"""The ``laplace`` strategy: a Laplace density of noise levels in log-SNR (Hang et al., "Improved Noise Schedule
for Diffusion Training", arXiv 2407.03297, ICCV 2025)."""

from __future__ import annotations

import torch

from .base import TimestepSampler, check_param, is_number, register
from .lognormal import level_of_log_sigma


@register
class Laplace(TimestepSampler):
    """λ = log-SNR ~ Laplace(μ, b), p(λ) = exp(−|λ − μ|/b)/(2b) (Hang et al. 2024, §3: the training mass is
    concentrated around log-SNR μ, where the paper finds the denoising task changes most), drawn by the inverse
    CDF λ = μ − b·sign(v)·ln(1 − 2|v|), v ~ U(−½, ½). Defaults μ = 0 (SNR 1), b = 0.5, the values reported for
    the paper's best ImageNet schedule [reconstruction: as reported by secondary sources; no official code].

    The draw is mapped to the process as ``lognormal`` maps its ln σ, with ln σ = −λ/2 (SNR = 1/σ²): σ on an EDM
    process, the nearest timestep in ln σ on a discrete one, the flow time with that SNR (through the shift).
    Weight 1: it changes the training density, as the paper does, rather than reweighting a uniform one."""

    name = "laplace"
    supports = ("discrete", "continuous", "flow")

    def __init__(self, process, total_steps=None, mu: float = 0.0, b: float = 0.5):
        super().__init__(process, total_steps)
        check_param("mu", mu, is_number(mu), "a finite number (a log-SNR, in nats)")
        check_param("b", b, is_number(b) and b > 0, "a number > 0")
        self.mu, self.b = float(mu), float(b)

    def _draw(self, batch_size, generator):
        v = torch.rand(batch_size, dtype=torch.float64, generator=generator) - 0.5
        lam = self.mu - self.b * torch.sign(v) * torch.log1p(-2 * v.abs()).clamp(min=-700)
        return level_of_log_sigma(self.process, (-lam / 2).float()), None
