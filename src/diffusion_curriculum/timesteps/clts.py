"""CLTS: the curriculum learning timestep schedule.

Xu et al. 2024, "Towards Faster Training of Diffusion Models: An Inspiration of A Consistency Phenomenon"
(arXiv 2404.07946). Finding: as t → T the ε-prediction task is easy (x_t ≈ ε), so those steps need less
training as training goes on; CLTS moves sampling mass away from large t over training.

**[reconstruction]** (docs/methods.md, "CLTS"): the paper's exact density could not be read, so this module implements
the project's documented reconstruction — a uniform density mixed with a Gaussian centred at μ·T (the centre
0.3·T the authors' ablation is reported to prefer; the mixing form follows an independent re-implementation,
SpeeD's CLTS baseline), the Gaussian's share ramping linearly:

    p_s(t) ∝ (1 − λ_s) · 1/T + λ_s · φ((t/T − μ)/σ) / Z,   λ_s = λ_max · clip((s − s_start)/(s_end − s_start), 0, 1)

with Z = Σ_{t=0}^{T−1} φ((t/T − μ)/σ), so both parts are normalised over the discrete t and p_s sums to 1.
Every default (μ = 0.3, σ = 0.2 in the coordinate t — the default coordinate, the noise rate below, has
its own —, λ_max = 1, s_start = 0, s_end = 50 % of the planned steps or 50 000) is the project's documented choice, not a number from the paper. Weights are 1: CLTS changes what is trained, not the
objective.

**Coordinate** [reconstruction]: the paper says CLTS "leverages the noise rate as an explicit indicator of the
learning difficulty", and a Gaussian in t/T is tied to one noise schedule (t = 0.3·T is √(1 − ᾱ) = 0.78 on the
linear schedule, 0.46 on the cosine one). ``coordinate`` puts the Gaussian in a schedule-free quantity c(t)
instead: ``noise-rate`` c = √(1 − ᾱ_t) ∈ [0, 1], or ``log-snr`` c = log(ᾱ_t/(1 − ᾱ_t)) in nats (μ and σ then in
log-SNR units: a range normalised by the schedule's own ends would tie it to the schedule again — the cosine
schedule's log-SNR ends at −19.8, the linear one's at −10.1). The Gaussian is a density *in c*, so the mass at
t is φ((c(t) − μ)/σ)·|Δc(t)| (Δc the central difference of c between neighbouring steps), normalised over t:
the drawn noise rates (or log-SNRs) follow the same law whatever the schedule. Defaults per coordinate place the
centre and the ±σ band where ``t``'s defaults put them on the linear schedule (t = 0.3·T ± 0.2·T): noise-rate
μ = 0.78, σ = 0.25; log-snr μ = −0.4, σ = 2.3.
"""

from __future__ import annotations

import math
import warnings

import torch

from .base import TimestepSampler, check_choice, check_param, is_int, is_number, register

#: s_end when a fractional ``end`` is given but the planned number of steps is unknown (docs/methods.md, "CLTS")
DEFAULT_END_STEPS = 50_000

COORDINATES = ("t", "noise-rate", "log-snr")
#: (μ, σ) per coordinate when not given [reconstruction]: where t's (0.3, 0.2) fall on the linear schedule
DEFAULT_MU_SIGMA = {"t": (0.3, 0.2), "noise-rate": (0.78, 0.25), "log-snr": (-0.4, 2.3)}
#: the coordinate when none is given on a discrete or flow process (EDM has only its quantile coordinate, "t");
#: "noise-rate" since it held on both the linear and the cosine schedule (docs/methods.md, "CLTS")
DEFAULT_COORDINATE = "noise-rate"

# keep u strictly inside (0, 1) so Φ⁻¹(u) stays finite
_U_EPS = 2.0**-60


def _is_fraction(v) -> bool:
    return isinstance(v, float) and math.isfinite(v)


@register
class CLTS(TimestepSampler):
    """Curriculum learning timestep schedule (Xu et al. 2024, arXiv 2404.07946) — **[reconstruction]**, see
    the module docstring for the density p_s(t) and why it is a reconstruction.

    Parameters
    ----------
    coordinate:
        where the Gaussian lives (discrete processes): ``t`` (t/T, the original form), ``noise-rate``
        (√(1 − ᾱ_t)) or ``log-snr`` (log-SNR in nats); see the module docstring. Default ``noise-rate`` (``t``,
        the quantile coordinate, on EDM processes); a checkpoint written before this default is refused by
        :meth:`load_state_dict` with the line to add, not resumed with another density.
    mu, sigma:
        centre and width of the Gaussian in that coordinate (μ ∈ [0, 1] for ``t`` and ``noise-rate``, any
        finite μ for ``log-snr``; σ > 0); defaults per coordinate (``noise-rate``: 0.78 and 0.25; ``t``: 0.3 and 0.2).
    lambda_max:
        the Gaussian's final share λ_max ∈ [0, 1] (default 1: pure Gaussian at the end of the ramp).
    start, end:
        the ramp of λ from 0 (step ``start``) to λ_max (step ``end``). A Python ``float`` in [0, 1] is a
        fraction of ``total_steps``; an ``int`` ≥ 0 is a step count. When ``total_steps`` is ``None`` a
        fractional ``end`` means 50 000 steps (whatever the fraction) and a fractional ``start`` means step 0
        (docs/methods.md, "CLTS"). After this resolution ``end`` must be > ``start`` (and, when both are fractions,
        ``end`` > ``start`` as fractions).

    The step s is the sampler's own counter (``self.step``: the number of ``observe`` calls, i.e. optimizer
    steps so far), so it resumes with the state dict.

    Discrete processes: t ~ p_s by ``torch.multinomial`` (exactly ``torch.randint(0, T)`` while λ_s = 0, so a
    run matches the uniform baseline bit for bit until the ramp starts). The probability vector is cached and
    recomputed only when λ changes.

    EDM processes: the same shape in the quantile coordinate u = Φ((ln σ − P_mean)/P_std) ∈ (0, 1) of the
    training log-normal (u → 1 is the noisiest, playing the role of t/T): with probability 1 − λ_s, u is
    uniform (which is the plain log-normal); otherwise u ~ N(μ, σ²) truncated to (0, 1), drawn by the inverse
    CDF; then ln σ = P_mean + P_std·Φ⁻¹(u).

    Flow processes: every coordinate is a function c(t) of the time — ``t`` (t itself, μ and σ fractions of the
    axis as on a discrete process), ``noise-rate`` (1/√(1 + SNR), the VP noise rate √(1 − ᾱ) of the same SNR, so
    its defaults mean the same noise levels as on a VP process) or ``log-snr`` (2 ln((1 − t')/t')). With
    probability 1 − λ_s, t is uniform; otherwise c ~ N(μ, σ²) truncated to c's range over [eps, 1 − eps] (inverse
    CDF), mapped back to t (through the inverse shift). A Gaussian in c is a density in c, as on a discrete process.
    """

    name = "clts"
    CHANGED_DEFAULTS = {"coordinate": "t"}
    supports = ("discrete", "continuous", "flow")

    def __init__(
        self,
        process,
        total_steps: int | None = None,
        mu: float | None = None,
        sigma: float | None = None,
        lambda_max: float = 1.0,
        start: float | int = 0.0,
        end: float | int = 0.5,
        coordinate: str | None = None,
    ):
        super().__init__(process, total_steps)
        #: whether the coordinate was configured (a checkpoint from before it was saved honoured that choice)
        self._coordinate_given = coordinate is not None
        if coordinate is None:
            coordinate = DEFAULT_COORDINATE if self.kind != "continuous" else "t"
        check_choice("coordinate", coordinate, COORDINATES)
        check_param(
            "coordinate",
            coordinate,
            coordinate == "t" or self.kind != "continuous",
            "'t' on an EDM process (CLTS works in the quantile coordinate of its training log-normal there)",
        )
        mu = DEFAULT_MU_SIGMA[coordinate][0] if mu is None else mu
        sigma = DEFAULT_MU_SIGMA[coordinate][1] if sigma is None else sigma
        unit = (
            "in log-SNR nats" if coordinate == "log-snr" else "a fraction of T" if coordinate == "t" else ""
        )
        if coordinate == "log-snr":
            check_param("mu", mu, is_number(mu), "a finite number (log-SNR)")
        else:
            check_param(
                "mu", mu, is_number(mu) and 0 <= mu <= 1, f"a number in [0, 1] ({unit or coordinate})"
            )
        check_param("sigma", sigma, is_number(sigma) and sigma > 0, f"a number > 0 ({unit or coordinate})")
        self.coordinate = coordinate
        self._record_setting("coordinate", coordinate, self._coordinate_given)
        check_param(
            "lambda_max", lambda_max, is_number(lambda_max) and 0 <= lambda_max <= 1, "a number in [0, 1]"
        )
        allowed = "a float in [0, 1] (fraction of total_steps) or an integer >= 0 (a step count)"
        for pname, v in (("start", start), ("end", end)):
            ok = (_is_fraction(v) and 0 <= v <= 1) or (is_int(v) and v >= 0)
            check_param(pname, v, ok, allowed)
        self.mu, self.sigma, self.lambda_max = float(mu), float(sigma), float(lambda_max)
        self.start, self.end = start, end
        if _is_fraction(start) and _is_fraction(end):  # checked as fractions even when total_steps is unknown
            check_param("end", end, end > start, f"a fraction of total_steps greater than start={start!r}")
        self.s_start = self._resolve(start, is_end=False)
        self.s_end = self._resolve(end, is_end=True)
        check_param(
            "end",
            end,
            self.s_end > self.s_start,
            f"a point after start={start!r} (resolved: end {self.s_end:g} steps, start {self.s_start:g} steps)",
        )
        self._lam_cached: float | None = None
        self._p_cached: torch.Tensor | None = None
        if self.kind == "discrete":
            self._gauss = self._gaussian_mass()
        elif self.kind == "flow":
            ends = self._flow_c(torch.tensor([process.eps, 1 - process.eps], dtype=torch.float64))
            lo, hi = sorted(ends.tolist())
            n = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
            self._cdf_lo = float(n.cdf(torch.tensor((lo - self.mu) / self.sigma, dtype=torch.float64)))
            self._cdf_hi = float(n.cdf(torch.tensor((hi - self.mu) / self.sigma, dtype=torch.float64)))
            if not self._cdf_hi > self._cdf_lo:
                raise ValueError(
                    f"clts: the Gaussian (coordinate={coordinate!r}, mu={self.mu}, sigma={self.sigma}) has no "
                    f"mass on this process's range [{lo:.3g}, {hi:.3g}]; move mu into it or widen sigma"
                )
        else:
            self.P_mean, self.P_std = float(process.P_mean), float(process.P_std)
            # truncation of N(μ, σ²) to (0, 1) in CDF space
            n = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
            self._cdf_lo = float(n.cdf(torch.tensor(-self.mu / self.sigma, dtype=torch.float64)))
            self._cdf_hi = float(n.cdf(torch.tensor((1 - self.mu) / self.sigma, dtype=torch.float64)))

    def _gaussian_mass(self) -> torch.Tensor:
        """The Gaussian part of p_s over the discrete t (float64, sums to 1), in :attr:`coordinate`."""
        T = int(self.process.T)
        if self.coordinate == "t":
            x = torch.arange(T, dtype=torch.float64) / T
            g = torch.exp(-0.5 * ((x - self.mu) / self.sigma) ** 2)  # φ up to a constant, which Z absorbs
            return g / g.sum()
        ac = self.process.alphas_cumprod.double()
        c = (1 - ac).sqrt() if self.coordinate == "noise-rate" else (ac / (1 - ac)).log()
        # a density in c: the mass at t is φ(c(t))·|Δc(t)|
        width = torch.gradient(c)[0].abs() if T > 1 else torch.ones(1, dtype=torch.float64)
        g = torch.exp(-0.5 * ((c - self.mu) / self.sigma) ** 2) * width
        if not (g.sum() > 0):
            raise ValueError(
                f"clts: the Gaussian (coordinate={self.coordinate!r}, mu={self.mu}, sigma={self.sigma}) has no "
                "mass on this process's noise levels; move mu into their range or widen sigma"
            )
        return g / g.sum()

    def _flow_c(self, t: torch.Tensor) -> torch.Tensor:
        """The coordinate c(t) on a flow process (float64): t itself, the noise rate 1/√(1 + SNR) (=
        t'/√(t'² + (1 − t')²), the VP noise rate √(1 − ᾱ) of the same SNR) or the log-SNR 2 ln((1 − t')/t')."""
        p = self.process
        if self.coordinate == "t":
            return t
        if self.coordinate == "log-snr":
            return p.snr(t).log()
        tp = p.shifted(t)
        return tp / (tp.pow(2) + (1 - tp).pow(2)).sqrt()

    def _flow_t(self, c: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`_flow_c`: the time t (float64, clamped) of each coordinate value c."""
        p = self.process
        if self.coordinate == "t":
            return p.clamp(c)
        if self.coordinate == "log-snr":
            return p.unshifted(torch.sigmoid(-c / 2))
        c = c.clamp(_U_EPS, 1 - _U_EPS)
        r = c / (1 - c.pow(2)).sqrt()  # = t'/(1 − t')
        return p.unshifted(r / (1 + r))

    def _resolve(self, v, is_end: bool) -> float:
        """A ``start`` / ``end`` value in optimizer steps (a float; no rounding)."""
        if is_int(v):
            return float(v)
        if self.total_steps is None:
            if is_end:
                warnings.warn(
                    f"clts: end={v!r} is a fraction of total_steps, which was not given, so the schedule ramps over "
                    f"{DEFAULT_END_STEPS} steps; pass total_steps (your planned optimizer steps) or end in steps",
                    UserWarning,
                    stacklevel=5,  # the caller of timesteps.build / the constructor
                )
                return float(DEFAULT_END_STEPS)
            return 0.0
        return float(v) * self.total_steps

    def lam(self, step: int | None = None) -> float:
        """λ_s = λ_max · clip((s − s_start)/(s_end − s_start), 0, 1) at ``step`` (default: the current step)."""
        s = self.step if step is None else step
        frac = (s - self.s_start) / (self.s_end - self.s_start)
        return self.lambda_max * min(max(frac, 0.0), 1.0)

    def probs(self) -> torch.Tensor:
        """The current discrete p_s(t) (float64, length T, sums to 1); cached per λ."""
        if self.kind != "discrete":
            raise ValueError("CLTS.probs() is defined for a discrete process only; an EDM process draws in u")
        lam = self.lam()
        if self._lam_cached != lam or self._p_cached is None:
            self._p_cached = (1.0 - lam) / self.process.T + lam * self._gauss
            self._lam_cached = lam
        return self._p_cached

    def _draw(self, batch_size, generator):
        lam = self.lam()
        if self.kind == "discrete":
            if lam == 0.0:
                return torch.randint(0, self.process.T, (batch_size,), generator=generator), None
            return torch.multinomial(self.probs(), batch_size, replacement=True, generator=generator), None
        pick = torch.rand(batch_size, dtype=torch.float64, generator=generator)
        v = torch.rand(batch_size, dtype=torch.float64, generator=generator)
        # truncated normal by inverse CDF: u = μ + σ Φ⁻¹(Φ(a) + v (Φ(b) − Φ(a)))
        q = (self._cdf_lo + v * (self._cdf_hi - self._cdf_lo)).clamp(_U_EPS, 1 - _U_EPS)
        if self.kind == "flow":
            t_gauss = self._flow_t(self.mu + self.sigma * torch.special.ndtri(q))
            return torch.where(pick < lam, t_gauss, self.process.clamp(v)).float(), None
        u_gauss = (self.mu + self.sigma * torch.special.ndtri(q)).clamp(_U_EPS, 1 - _U_EPS)
        u = torch.where(pick < lam, u_gauss, v.clamp(_U_EPS, 1 - _U_EPS))
        sigma = torch.exp(self.P_mean + self.P_std * torch.special.ndtri(u))
        return sigma.float(), None

    def status(self):
        return {"lambda": round(self.lam(), 4)}

    def __repr__(self) -> str:
        return (
            f"CLTS(process={self.process!r}, coordinate={self.coordinate!r}, mu={self.mu}, sigma={self.sigma}, "
            f"step={self.step})"
        )
