"""The grids of noise levels the samplers of :mod:`~diffusion_curriculum.generate` walk: DDIM's timestep
sub-sequence and EDM's σ schedule (importable from ``generate`` too)."""

from __future__ import annotations

import torch
from torch import Tensor

from .checks import check_value, is_int, is_number

__all__ = ["ddim_timesteps", "edm_sigmas"]


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """``steps`` timesteps evenly spaced from T−1 down to 0, both included: round(linspace(T−1, 0, steps)).

    (Song et al. 2021 §4.2 use a sub-sequence τ of [1, …, T]; this is the "linear" choice with the last step
    landing on t = 0.) ``steps = 1`` gives just [T−1].
    """
    check_value("steps", steps, is_int(steps) and 1 <= steps <= T, f"an integer in [1, {T}] for this process")
    if steps == 1:
        return [T - 1]
    return [round((T - 1) * (1 - i / (steps - 1))) for i in range(steps)]


def edm_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """The EDM noise levels of Karras et al. 2022, eq. 5, with N = ``steps``.

    σ_i = (σ_max^{1/ρ} + i/(N−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ for i < N, and σ_N = 0. Returns these N + 1
    values (float64). ``steps = 1`` gives [σ_max, 0].
    """
    check_value("steps", steps, is_int(steps) and steps >= 1, "a positive integer")
    check_value("rho", rho, is_number(rho) and rho > 0, "a number > 0")
    i = torch.arange(steps, dtype=torch.float64)
    frac = i / max(steps - 1, 1)
    sig = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)])
