"""Rectified flow / flow matching as a noise process: the straight path from data to noise of SD3 and Flux.

    x_t = (1 − t')·x0 + t'·ε,   v = ε − x0,   t' = shift(t) = s·t / (1 + (s − 1)·t)

Rectified flow (Liu et al. 2023, "Flow Straight and Fast: Learning to Generate and Transfer Data with Rectified
Flow", eq. 1: X_t = t·X1 + (1 − t)·X0 with the velocity target X1 − X0) and flow matching on the optimal-transport
path (Lipman et al. 2023, "Flow Matching for Generative Modeling", eq. 20–23, with σ_min = 0 and time reversed, so
that here larger t = more noise, as in every process of the library and in diffusers'
``FlowMatchEulerDiscreteScheduler``). The shift is SD3's resolution-dependent shift (Esser et al. 2024, "Scaling
Rectified Flow Transformers for High-Resolution Image Synthesis", §5.3.2, eq. 23, with s = √(m/n)).

**Where the shift applies.** A draw's ``t`` is the position on the *unshifted* axis: samplers draw ``t`` in
(0, 1) and every method of the process first maps it to the noise level t' = shift(t). This is what diffusers
does: its training scripts draw u (uniform, logit-normal, …), index the scheduler's *shifted* sigmas with it, and
its ``set_timesteps`` shifts an evenly spaced grid for inference. So the shift acts on the sampled training t and
on the inference grid alike, and a sampler's density (logit-normal, a curriculum's clusters, …) is a density of
the unshifted t, exactly as in diffusers. With s = 1 (the default) t' = t.

**The clamp** [reconstruction]: where 1/t' or 1/(1 − t') appear (SNR, σ, the ε ↔ x0 conversions) and in
everything a sampler returns, t is clamped to [eps, 1 − eps] (``eps`` = 1e-5 by default) before the shift, so
every value stays finite; the velocity target itself needs no clamp.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..checks import is_number
from .common import ProcessError, _bcast, _check_prediction, _eps_or_x0_target

#: diffusers FlowMatchEulerDiscreteScheduler options whose sigmas FlowProcess does not represent (refused)
_UNREPRESENTED_SCHEDULER_KEYS = (
    "use_dynamic_shifting",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "invert_sigmas",
    "shift_terminal",
)

__all__ = ["FlowProcess"]


class FlowProcess:
    """The rectified-flow process x_t = (1 − t')x0 + t'ε, t' = shift(t) (see the module docstring for the sources).

    ``t`` is a float tensor in (0, 1) (0 ≤ t ≤ 1 is accepted and clamped, see below); larger t = more noise.

    * SNR(t) = ((1 − t')/t')² (the squared ratio of the signal and noise coefficients).
    * σ(t) = t'/(1 − t') = SNR^{-1/2}: the EDM-equivalent noise level, since x_t/(1 − t') = x0 + σ·ε.
    * Predictions: ``"v"`` (the velocity ε − x0, the default: the rectified-flow / flow-matching target),
      ``"eps"`` and ``"x0"``, converted into each other through x0 = x_t − t'·v and ε = x_t + (1 − t')·v.

    Parameters
    ----------
    shift:
        s > 0 of t' = s·t/(1 + (s − 1)·t) (Esser et al. 2024, §5.3.2, eq. 23); 1 = no shift, SD3 uses 3.
    time_scale:
        the network is fed ``time_scale · t'`` (:meth:`model_input`): 1000 (the default) is what diffusers'
        flow transformers take (``timestep = sigma · num_train_timesteps``) and suits the library's models,
        whose time embedding is built for timestep indices; 1 feeds t' itself.
    eps:
        the clamp: t is kept in [eps, 1 − eps] wherever 1/t' or 1/(1 − t') would blow up (default 1e-5)
        [reconstruction].
    grid_min:
        where the inference grid ends before its final step to 0 (:meth:`grid`): ``None`` (the default) gives
        the evenly spaced grid t = 1, 1 − 1/N, …, 1/N, 0; :meth:`from_scheduler` sets the scheduler's
        ``sigma_min`` so the grid is exactly diffusers' ``set_timesteps``.
    """

    continuous = True
    #: the process kind samplers and generation methods dispatch on (``TimestepSampler.supports``)
    kind = "flow"

    def __init__(
        self, shift: float = 1.0, time_scale: float = 1000.0, eps: float = 1e-5, grid_min: float | None = None
    ):
        for k, v in (("shift", shift), ("time_scale", time_scale)):
            if not (is_number(v) and v > 0):
                raise ProcessError(f"FlowProcess needs {k} > 0, got {v!r}")
        if not (is_number(eps) and 0 < eps < 0.5):
            raise ProcessError(f"FlowProcess needs eps in (0, 0.5), got {eps!r}")
        if grid_min is not None and not (is_number(grid_min) and 0 < grid_min < 1):
            raise ProcessError(f"FlowProcess needs grid_min in (0, 1) or None, got {grid_min!r}")
        self.name = "flow"
        self.shift = float(shift)
        self.time_scale = float(time_scale)
        self.eps = float(eps)
        self.grid_min = None if grid_min is None else float(grid_min)

    @classmethod
    def from_scheduler(cls, scheduler, eps: float = 1e-5) -> FlowProcess:
        """The process of a diffusers ``FlowMatchEulerDiscreteScheduler`` (read from its config: ``shift``,
        ``num_train_timesteps`` → ``time_scale``, and its ``sigma_min`` → ``grid_min``).

        Then ``add_noise(x0, ε, t)`` at t = (N − i)/N equals ``scheduler.scale_noise(x0, scheduler.timesteps[i], ε)``
        (N = ``num_train_timesteps``), ``shifted(t)`` equals ``scheduler.sigmas[i]``, and :meth:`grid` equals the
        sigmas of ``scheduler.set_timesteps(steps)``. Dynamic (resolution-dependent "mu") shifting, Karras /
        exponential / beta sigmas, ``shift_terminal`` and inverted sigmas are not represented and are refused.
        """
        cfg = scheduler.config
        for key in _UNREPRESENTED_SCHEDULER_KEYS:
            if cfg.get(key):
                raise ProcessError(
                    f"FlowProcess.from_scheduler cannot represent a scheduler with {key}={cfg.get(key)!r}; "
                    "use a scheduler without it"
                )
        n = int(cfg.get("num_train_timesteps", 1000))
        return cls(
            shift=float(cfg.get("shift", 1.0)),
            time_scale=float(n),
            eps=eps,
            grid_min=float(scheduler.sigma_min),
        )

    # -- time --------------------------------------------------------------------------------------------
    def check_t(self, t: Tensor) -> None:
        """Raise unless ``t`` is float positions in [0, 1]."""
        if not t.is_floating_point():
            raise ProcessError(f"a FlowProcess needs float times t in (0, 1), got dtype {t.dtype}")
        if t.numel() and not ((t >= 0).all() and (t <= 1).all()):
            raise ProcessError(
                f"times t of a FlowProcess must lie in [0, 1], got [{float(t.min())}, {float(t.max())}]"
            )

    def clamp(self, t: Tensor) -> Tensor:
        """t clamped to [eps, 1 − eps] (float; float32 unless ``t`` is float64), see the module docstring."""
        t = t if t.dtype == torch.float64 else t.float()
        return t.clamp(self.eps, 1.0 - self.eps)

    def shifted(self, t: Tensor) -> Tensor:
        """The noise level t' = s·t/(1 + (s − 1)·t) of the (clamped) t (Esser et al. 2024, §5.3.2, eq. 23)."""
        t = self.clamp(t)
        if self.shift == 1.0:
            return t
        return self.shift * t / (1.0 + (self.shift - 1.0) * t)

    def unshifted(self, t_shifted: Tensor) -> Tensor:
        """The inverse of the shift: t = t'/(s − (s − 1)·t'), for samplers that choose a noise level t'."""
        tp = t_shifted if t_shifted.dtype == torch.float64 else t_shifted.float()
        return self.clamp(tp / (self.shift - (self.shift - 1.0) * tp))

    def grid(self, steps: int) -> Tensor:
        """The inference grid of unshifted times, float64, ``steps + 1`` values from 1 down to 0:
        linspace(1, grid_min, steps) then 0 (``grid_min=None``: 1/steps, so the grid is linspace(1, 0, steps + 1)).

        The shift is applied when the process maps each t to t' (:meth:`shifted`), as diffusers' ``set_timesteps``
        shifts its linspace. (diffusers' grid ends at its scheduler's already-shifted ``sigma_min``, which
        ``set_timesteps`` shifts once more; :meth:`from_scheduler` keeps that, so the grids agree.)
        """
        if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
            raise ProcessError(f"steps={steps!r} is invalid; allowed: a positive integer")
        end = 1.0 / steps if self.grid_min is None else self.grid_min
        return torch.cat(
            [torch.linspace(1.0, end, steps, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)]
        )

    def shifted_grid(self, steps: int) -> Tensor:
        """The noise levels t' of :meth:`grid` (float64; the last one exactly 0): what an Euler sampler steps
        through, equal to diffusers' ``scheduler.sigmas`` after ``set_timesteps(steps)``."""
        g = self.grid(steps)
        s = self.shift
        return s * g / (1.0 + (s - 1.0) * g)

    # -- the interface -------------------------------------------------------------------------------------
    def _tp(self, t: Tensor, like: Tensor | None = None) -> Tensor:
        tp = self.shifted(t)
        return tp if like is None else _bcast(tp, like)

    def snr(self, t: Tensor) -> Tensor:
        """SNR(t) = ((1 − t')/t')², computed in float64 (float32 out, unless ``t`` is float64)."""
        return self.sigma(t).pow(-2)

    def sigma(self, t: Tensor) -> Tensor:
        """The EDM-equivalent noise level σ(t) = t'/(1 − t') = SNR^{-1/2} (x_t/(1 − t') = x0 + σ·ε), computed in
        float64 (float32 out, unless ``t`` is float64)."""
        tp = self.shifted(t.double())
        return (tp / (1.0 - tp)).to(torch.float64 if t.dtype == torch.float64 else torch.float32)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = (1 − t')·x0 + t'·ε (Liu et al. 2023, eq. 1; diffusers' ``scale_noise``)."""
        tp = self._tp(t, x0)
        return (1.0 - tp) * x0 + tp * noise

    def model_input(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(x_t, time_scale·t'): x_t unscaled and the shifted time, scaled as diffusers' flow models take it."""
        dtype = x_t.dtype if x_t.is_floating_point() else torch.float32
        return x_t, (self.time_scale * self.shifted(t)).to(dtype)

    def target(
        self, x0: Tensor, noise: Tensor, t: Tensor, prediction: str = "v", x_t: Tensor | None = None
    ) -> Tensor:
        """Training target: the velocity v = ε − x0 (Lipman et al. 2023, eq. 23; Liu et al. 2023, eq. 1), ε or x0."""
        if prediction != "v":
            return _eps_or_x0_target(x0, noise, prediction)
        return noise - x0

    def predict_x0(self, out: Tensor, x_t: Tensor, t: Tensor, prediction: str = "v") -> Tensor:
        """Clean-sample estimate: x0 = x_t − t'·v̂ (v), (x_t − t'·ε̂)/(1 − t') (eps), or the output itself (x0)."""
        _check_prediction(prediction)
        tp = self._tp(t, x_t)
        if prediction == "v":
            return x_t - tp * out
        if prediction == "eps":
            return (x_t - tp * out) / (1.0 - tp)
        return out

    def predict_eps(self, out: Tensor, x_t: Tensor, t: Tensor, prediction: str = "v") -> Tensor:
        """Noise estimate: ε = x_t + (1 − t')·v̂ (v), the output itself (eps), or (x_t − (1 − t')·x̂0)/t' (x0)."""
        _check_prediction(prediction)
        tp = self._tp(t, x_t)
        if prediction == "v":
            return x_t + (1.0 - tp) * out
        if prediction == "eps":
            return out
        return (x_t - (1.0 - tp) * out) / tp

    def predict_v(self, out: Tensor, x_t: Tensor, t: Tensor, prediction: str = "v") -> Tensor:
        """Velocity estimate v̂ = ε̂ − x̂0 from the network output (what the ODE samplers integrate):
        the output itself (v), (ε̂ − x_t)/(1 − t') (eps), or (x_t − x̂0)/t' (x0)."""
        _check_prediction(prediction)
        tp = self._tp(t, x_t)
        if prediction == "v":
            return out
        if prediction == "eps":
            return (out - x_t) / (1.0 - tp)
        return (x_t - out) / tp

    def log_snr_range(self) -> tuple[float, float]:
        """(smallest, largest) log-SNR the clamp allows: at t = 1 − eps and t = eps (after the shift), in nats."""
        lo, hi = self.snr(torch.tensor([1.0 - self.eps, self.eps], dtype=torch.float64)).log().tolist()
        return lo, hi

    def __repr__(self) -> str:
        extra = "" if self.grid_min is None else f", grid_min={self.grid_min:g}"
        return f"FlowProcess(shift={self.shift:g}, time_scale={self.time_scale:g}{extra})"
