"""SpeeD: asymmetric timestep sampling, dual sampling and change-aware weighting.

Wang et al. 2024, "A Closer Look at Time Steps is Worthy of Triple Speed-Up for Diffusion Model Training"
(arXiv 2405.17403), implemented exactly as its authors' code does it (docs/methods.md, "Peers and baselines"):

* **Asymmetric sampling** (§4.2, "Asymmetric Sampling"): with threshold τ and suppression k,
  P(t) = k / (kτ + T − τ) for t < τ and 1 / (kτ + T − τ) for t ≥ τ — the "convergence area" near T, whose
  losses are already low, is drawn k times less often than the rest.
* **Dual sampling**: t_dual = 1 + the first t at which the numerical gradient d/dt √(1 − ᾱ_t) falls below
  1e-4; ⌊n/2⌋ + 1 timesteps are drawn from P and each is paired with t_dual − t (t < t_dual) or t − t_dual
  (t ≥ t_dual); the two halves are concatenated and the first n kept.
* **Change-aware weighting** (§4.2, "Change-Aware Weighting"): d_t = d/dt (1 − ᾱ_t) (numerical gradient),
  w_t = (1 − λ) + (2λ − 1)·(d_t − min d)/(max d − min d) for t < τ and w_t = 1 for t ≥ τ, λ ∈ [0.5, 1]:
  the steps where the process changes fastest get the largest weight.

Check values (docs/methods.md, "Peers and baselines", verified in the tests): linear β 1e-4 → 0.02, T = 1000 gives t_dual = 642;
cosine gives 959; for τ = 700, k = 2 the probability mass below τ is 1400/1700 ≈ 0.824.

**Flow processes** [reconstruction]: SpeeD's quantities are functions of ᾱ_t, i.e. of the SNR curve. A flow
process is cut into ``cells`` = C equal cells of t (default 1000) and given the variance-preserving table with the
*same SNR* at the cell centres, ᾱ_i = SNR(t_i)/(1 + SNR(t_i)), t_i = (i + ½)/C (:func:`flow_table`); τ, t_dual
and the change-aware weights are computed on that table exactly as above (so t_dual is where the VP-equivalent
noise rate 1/√(1 + SNR) flattens), a cell is drawn and t is uniform inside it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .base import TimestepSampler, check_param, is_int, is_number, register

#: SpeeD's default threshold for T = 1000 steps (the authors' ``tau=700``)
DEFAULT_TAU_1000 = 700


def scaled_tau(T: int, tau: int | None = None) -> int:
    """The asymmetric-sampling threshold τ for a process with T steps.

    ``tau=None`` gives SpeeD's default 700 for T = 1000, scaled to other T as round(700·T/1000) with halves
    rounded up (computed in integers, so it is exact). An explicit ``tau`` is a step count of *this* T and is
    returned unchanged after checking 0 < τ < T.
    """
    check_param("T", T, is_int(T) and T >= 2, "an integer >= 2")
    if tau is None:
        tau = (DEFAULT_TAU_1000 * T + 500) // 1000
        return min(max(tau, 1), T - 1)
    check_param("tau", tau, is_int(tau) and 0 < tau < T, f"an integer with 0 < tau < T = {T}, or None")
    return int(tau)


def t_dual(process, threshold: float = 1e-4) -> int:
    """SpeeD's dual-sampling pivot: 1 + the first t where d/dt √(1 − ᾱ_t) < ``threshold`` (default 1e-4).

    The gradient is ``numpy.gradient`` of √(1 − ᾱ_t) over the integer t grid in float64 (central differences
    inside, one-sided at the ends), as in the authors' code. Linear β 1e-4 → 0.02 with T = 1000 gives 642,
    cosine gives 959.

    Project choice (not from the paper): when no t qualifies (short or coarse schedules, e.g. T = 100, whose
    noise curve never flattens that much per step) the pivot is T − 1, so dual sampling becomes the mirror
    t ↦ T − 1 − t; the result is also capped at T − 1 so every dual timestep stays inside [0, T).
    """
    check_param("threshold", threshold, is_number(threshold) and threshold > 0, "a number > 0")
    ac = process.alphas_cumprod.double().cpu().numpy()
    grad = np.gradient(np.sqrt(1.0 - ac))
    below = np.flatnonzero(grad < threshold)
    T = int(process.T)
    if below.size == 0:
        return T - 1
    return int(min(int(below[0]) + 1, T - 1))


def flow_table(process, cells: int = 1000):
    """The variance-preserving :class:`~diffusion_curriculum.process.DiscreteProcess` with the same SNR as the flow
    ``process`` at the centres t_i = (i + ½)/C of C = ``cells`` equal cells: ᾱ_i = SNR(t_i)/(1 + SNR(t_i))."""
    from ..process import DiscreteProcess

    check_param("cells", cells, is_int(cells) and cells >= 2, "an integer >= 2")
    snr = process.snr((torch.arange(cells, dtype=torch.float64) + 0.5) / cells)
    return DiscreteProcess.from_alphas_cumprod(snr / (1 + snr))


def asymmetric_probs(T: int, tau: int, k: float) -> Tensor:
    """SpeeD's asymmetric sampling density (float64, length T, sums to 1):
    P(t) = k / (kτ + T − τ) for t < τ, 1 / (kτ + T − τ) for t ≥ τ."""
    check_param("T", T, is_int(T) and T >= 2, "an integer >= 2")
    check_param("tau", tau, is_int(tau) and 0 < tau < T, f"an integer with 0 < tau < T = {T}")
    check_param("k", k, is_number(k) and k >= 1, "a number >= 1")
    z = k * tau + T - tau
    p = torch.full((T,), 1.0 / z, dtype=torch.float64)
    p[:tau] = k / z
    return p


def change_aware_weights(process, tau: int | None = None, lam: float = 0.6) -> Tensor:
    """SpeeD's change-aware loss weights w_t (float64, length T) for a discrete process.

    d_t = d/dt (1 − ᾱ_t) by ``numpy.gradient`` (float64); for t < τ
    w_t = (1 − λ) + (2λ − 1)·(d_t − min d)/(max d − min d), and w_t = 1 for t ≥ τ.

    min d and max d are taken over **all** t ∈ [0, T), not only t < τ: that is what the SpeeD authors' code
    does (it normalises the whole gradient curve, then keeps the first τ entries and sets the rest to 1).
    So the weights below τ lie in [1 − λ, λ] but need not reach either end (linear β, T = 1000: the
    minimum of d is at t = 999 ≥ τ). If d is constant the normalised term is taken as 0 (weights 1 − λ).

    ``tau=None`` uses :func:`scaled_tau`; λ must lie in [0.5, 1] (λ = 0.5 makes every weight below τ equal
    to 0.5; λ = 1 spans the full range [0, 1]). This function is also what the ``speed`` loss weighting uses.
    """
    if getattr(process, "continuous", False):
        raise ValueError(
            "change_aware_weights needs a discrete process (SpeeD is defined on t ∈ {0, …, T−1})"
        )
    T = int(process.T)
    tau = scaled_tau(T, tau)
    check_param("lam", lam, is_number(lam) and 0.5 <= lam <= 1, "a number in [0.5, 1]")
    ac = process.alphas_cumprod.double().cpu().numpy()
    d = np.gradient(1.0 - ac)
    span = float(d.max() - d.min())
    norm = (d - d.min()) / span if span > 0 else np.zeros_like(d)
    w = (1.0 - lam) + (2.0 * lam - 1.0) * norm
    w[tau:] = 1.0
    return torch.from_numpy(w)


@register
class SpeeD(TimestepSampler):
    """SpeeD timestep sampling (Wang et al. 2024, arXiv 2405.17403, §4.2), on discrete processes and (through
    :func:`flow_table`, see the module docstring) flow processes; EDM processes are refused (SpeeD is defined on
    a fixed grid of timesteps, which EDM's σ has not).

    Parameters
    ----------
    tau:
        asymmetric-sampling threshold in steps of this process (0 < τ < T); ``None`` = 700·T/1000
        (see :func:`scaled_tau`).
    k:
        suppression factor ≥ 1: t < τ is drawn k times as often as t ≥ τ (default 2).
    dual:
        dual sampling around :func:`t_dual` (default on, as in the authors' code); off = n plain draws from P.
    lam:
        λ ∈ [0.5, 1] of the change-aware weighting (default 0.6).
    weights:
        return the change-aware weight w_t as the draw weight (default on). Do not also select the ``speed``
        loss weighting, which applies the same w_t — that would apply it twice.
    cells:
        flow processes only: the number C of equal cells of t SpeeD's grid has (default 1000); ``tau`` is then
        a cell index in (0, C).

    Draw: ``torch.multinomial(P, m, replacement=True, generator=g)`` with m = ⌊n/2⌋ + 1 (dual) or n.
    The sampler watches no losses; ``status()`` is empty.
    """

    name = "speed"
    supports = ("discrete", "flow")

    def __init__(
        self,
        process,
        total_steps: int | None = None,
        tau: int | None = None,
        k: float = 2.0,
        dual: bool = True,
        lam: float = 0.6,
        weights: bool = True,
        cells: int | None = None,
    ):
        super().__init__(process, total_steps)
        check_param(
            "cells",
            cells,
            cells is None or (self.kind == "flow" and is_int(cells) and cells >= 2),
            "an integer >= 2 on a flow process, or None (a discrete process has its own T steps)",
        )
        self.cells = (1000 if cells is None else int(cells)) if self.kind == "flow" else None
        grid = flow_table(process, self.cells) if self.kind == "flow" else process
        T = int(grid.T)
        check_param(
            "tau",
            tau,
            tau is None or (is_int(tau) and 0 < tau < T),
            f"an integer with 0 < tau < T = {T}, or None",
        )
        check_param("k", k, is_number(k) and k >= 1, "a number >= 1")
        check_param("dual", dual, isinstance(dual, bool), "true or false")
        check_param("lam", lam, is_number(lam) and 0.5 <= lam <= 1, "a number in [0.5, 1]")
        check_param("weights", weights, isinstance(weights, bool), "true or false")
        self.tau = scaled_tau(T, tau)
        self.k = float(k)
        self.dual = dual
        self.lam = float(lam)
        self.use_weights = weights
        self.t_dual = t_dual(grid)
        self.p = asymmetric_probs(T, self.tau, self.k)
        self.w = change_aware_weights(grid, self.tau, self.lam).float()

    def _draw(self, batch_size, generator):
        if self.dual:
            t = torch.multinomial(self.p, batch_size // 2 + 1, replacement=True, generator=generator)
            td = self.t_dual
            mapped = torch.where(t < td, td - t, t - td)
            t = torch.cat([t, mapped])[:batch_size]
        else:
            t = torch.multinomial(self.p, batch_size, replacement=True, generator=generator)
        w = self.w[t] if self.use_weights else None
        if self.kind == "flow":  # t is a cell; the time is uniform inside it
            u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
            return self.process.clamp((t.double() + u) / self.cells).float(), w
        return t, w
