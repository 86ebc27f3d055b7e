"""Noise processes: where a clean sample x0 goes at each noise level, and what the network learns to predict.

Three families:

* :class:`DiscreteProcess` — variance preserving, T steps, ``x_t = sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε``
  (Ho et al. 2020, eq. 4). ``t`` is a ``Long`` tensor in ``{0, …, T−1}``; larger t = more noise.
* :class:`EDMProcess` — variance exploding in σ with the EDM preconditioning (Karras et al. 2022, "Elucidating
  the Design Space of Diffusion-Based Generative Models", Table 1): ``x = x0 + σ n``; ``t`` *is* σ (float).
* :class:`FlowProcess` — rectified flow / flow matching (SD3, Flux): ``x_t = (1 − t') x0 + t' ε`` with
  t' = shift(t), ``t`` a float in (0, 1) (module :mod:`~diffusion_curriculum.process.flow`).

All three expose the same small interface the trainer, the samplers and the weightings use:
``snr(t)``, ``add_noise(x0, noise, t)``, ``model_input(x_t, t)`` (what the network is fed),
``target(x0, noise, t, prediction)`` (what it is trained to output) and ``predict_x0`` / ``predict_eps``
(turn its output back into a clean-image or noise estimate, for generation).

Prediction types: ``"eps"`` (ε-prediction), ``"v"`` (v-prediction, Salimans & Ho 2022, eq. in §4:
``v = sqrt(ᾱ) ε − sqrt(1−ᾱ) x0``) and ``"x0"``. For :class:`EDMProcess`, ``"v"`` is EDM's preconditioned
F-target ``(x0 − c_skip x) / c_out`` (Karras et al. eq. 8), which *is* v-prediction of the variance-preserving
rescaling of x when σ_data = 1; it is EDM's default and with it the plain MSE equals EDM's weighted loss
λ(σ)·‖D(x) − x0‖² because λ(σ)·c_out(σ)² = 1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..checks import check_params, is_int, is_number, unknown
from .common import (
    KINDS,
    PREDICTIONS,
    Prediction,
    ProcessError,
    _bcast,
    _check_prediction,
    _eps_or_x0_target,
    kind_of,
)
from .flow import FlowProcess

__all__ = [
    "KINDS",
    "PREDICTIONS",
    "DiscreteProcess",
    "EDMProcess",
    "FlowProcess",
    "Prediction",
    "Process",
    "ProcessError",
    "build",
    "kind_of",
]


class DiscreteProcess:
    """A discrete variance-preserving process with T steps (DDPM, Ho et al. 2020).

    Holds ``alphas_cumprod`` (ᾱ_t, float64, length T, strictly decreasing in (0, 1)). Build it with
    :meth:`linear`, :meth:`cosine`, :meth:`from_betas` or :meth:`from_alphas_cumprod` — the last takes a
    diffusers scheduler's ``alphas_cumprod`` unchanged.
    """

    continuous = False
    #: the process kind samplers and generation methods dispatch on (``TimestepSampler.supports``)
    kind = "discrete"

    def __init__(self, alphas_cumprod: Tensor | list[float], name: str = "custom"):
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu().flatten()
        if ac.numel() < 2:
            raise ProcessError(f"alphas_cumprod needs at least 2 values, got {ac.numel()}")
        if not torch.isfinite(ac).all() or (ac <= 0).any() or (ac >= 1).any():
            raise ProcessError("alphas_cumprod must be finite and strictly inside (0, 1)")
        if (ac[1:] > ac[:-1]).any():
            raise ProcessError("alphas_cumprod must be non-increasing in t (t larger = more noise)")
        self.name = name
        self.alphas_cumprod = ac
        self.T = int(ac.numel())
        prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        self.betas = 1.0 - ac / prev
        self._cache: dict[tuple, Tensor] = {}

    # -- constructors -------------------------------------------------------------------------------
    @classmethod
    def from_betas(cls, betas: Tensor | list[float], name: str = "custom") -> DiscreteProcess:
        """ᾱ_t = Π_{s≤t} (1 − β_s) (Ho et al. 2020, eq. 4)."""
        b = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if not torch.isfinite(b).all() or (b <= 0).any() or (b >= 1).any():
            raise ProcessError("betas must be finite and strictly inside (0, 1)")
        return cls(torch.cumprod(1.0 - b, 0), name=name)

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: Tensor | list[float]) -> DiscreteProcess:
        """Use a given ᾱ table, e.g. ``DDPMScheduler(...).alphas_cumprod`` from diffusers."""
        return cls(alphas_cumprod, name="custom")

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DiscreteProcess:
        """Linear β schedule of Ho et al. 2020 (§4): β_t evenly spaced from ``beta_start`` to ``beta_end``."""
        _check_T(T)
        if not 0 < beta_start <= beta_end < 1:
            raise ProcessError(
                f"linear schedule needs 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}"
            )
        return cls.from_betas(torch.linspace(beta_start, beta_end, T, dtype=torch.float64), name="linear")

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> DiscreteProcess:
        """Cosine schedule of Nichol & Dhariwal 2021, eq. 17: ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s)·π/2),
        with β_t = 1 − ᾱ(t+1)/ᾱ(t) clipped at ``max_beta`` = 0.999."""
        _check_T(T)

        def f(u: float) -> float:
            return math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2

        betas = [min(1 - f(i + 1) / f(i), max_beta) for i in range(T)]
        return cls.from_betas(betas, name="cosine")

    # -- the interface ------------------------------------------------------------------------------
    def _table(self, key: str, device, dtype=torch.float32) -> Tensor:
        k = (key, str(device), dtype)
        if k not in self._cache:
            ac = self.alphas_cumprod
            table = {
                "sqrt_ac": ac.sqrt(),
                "sqrt_1mac": (1 - ac).sqrt(),
                "snr": ac / (1 - ac),
            }[key]
            self._cache[k] = table.to(device=device, dtype=dtype)
        return self._cache[k]

    def _at(self, key: str, t: Tensor, like: Tensor | None = None) -> Tensor:
        dtype = like.dtype if like is not None and like.is_floating_point() else torch.float32
        dev = t.device
        v = self._table(key, dev, dtype)[t.long()]
        return v if like is None else _bcast(v, like)

    def check_t(self, t: Tensor) -> None:
        """Raise if ``t`` is not integer timesteps in [0, T)."""
        if t.is_floating_point() or t.is_complex():
            raise ProcessError(f"a DiscreteProcess needs integer timesteps, got dtype {t.dtype}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.T):
            raise ProcessError(f"timesteps must lie in [0, {self.T}), got [{int(t.min())}, {int(t.max())}]")

    def snr(self, t: Tensor) -> Tensor:
        """SNR(t) = ᾱ_t / (1 − ᾱ_t), float32, shape of ``t``."""
        return self._at("snr", t)

    def sigma(self, t: Tensor) -> Tensor:
        """The equivalent VE noise level σ(t) = sqrt((1 − ᾱ_t)/ᾱ_t) = SNR^{-1/2}."""
        return self.snr(t).rsqrt()

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε (Ho et al. 2020, eq. 4)."""
        return self._at("sqrt_ac", t, x0) * x0 + self._at("sqrt_1mac", t, x0) * noise

    def model_input(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The network sees x_t unscaled and the timestep index as a float."""
        return x_t, t.to(x_t.dtype if x_t.is_floating_point() else torch.float32)

    def target(
        self, x0: Tensor, noise: Tensor, t: Tensor, prediction: str = "eps", x_t: Tensor | None = None
    ) -> Tensor:
        """Training target: ε, v = sqrt(ᾱ)ε − sqrt(1−ᾱ)x0 (Salimans & Ho 2022), or x0."""
        if prediction != "v":
            return _eps_or_x0_target(x0, noise, prediction)
        return self._at("sqrt_ac", t, x0) * noise - self._at("sqrt_1mac", t, x0) * x0

    def predict_x0(self, out: Tensor, x_t: Tensor, t: Tensor, prediction: str = "eps") -> Tensor:
        """Clean-sample estimate from the network output ``out`` at (x_t, t)."""
        _check_prediction(prediction)
        a, s = self._at("sqrt_ac", t, x_t), self._at("sqrt_1mac", t, x_t)
        if prediction == "eps":
            return (x_t - s * out) / a
        if prediction == "x0":
            return out
        return a * x_t - s * out

    def predict_eps(self, out: Tensor, x_t: Tensor, t: Tensor, prediction: str = "eps") -> Tensor:
        """Noise estimate from the network output ``out`` at (x_t, t)."""
        _check_prediction(prediction)
        a, s = self._at("sqrt_ac", t, x_t), self._at("sqrt_1mac", t, x_t)
        if prediction == "eps":
            return out
        if prediction == "x0":
            return (x_t - a * out) / s
        return s * x_t + a * out

    def __repr__(self) -> str:
        return f"DiscreteProcess(name={self.name!r}, T={self.T})"


def _check_T(T: int) -> None:
    if not is_int(T) or T < 2:
        raise ProcessError(f"T must be an integer >= 2, got {T!r}")


class EDMProcess:
    """The EDM formulation (Karras et al. 2022): x = x0 + σ n, ``t`` is σ (a float tensor).

    Training σ follows ln σ ~ N(P_mean, P_std²) (Table 1, "Training"; drawn by the ``lognormal`` sampler);
    generation spans [sigma_min, sigma_max]. Preconditioning (Table 1, eq. 7):
    c_skip = σ_d²/(σ²+σ_d²), c_out = σ σ_d/sqrt(σ²+σ_d²), c_in = 1/sqrt(σ²+σ_d²), c_noise = ¼ ln σ.
    SNR(σ) = 1/σ² (docs/methods.md, 'Notation': σ_data is folded in only where a weighting says so).
    """

    continuous = True
    #: the process kind: "continuous" is EDM's σ (``TimestepSampler.supports``; a flow process is "flow")
    kind = "continuous"

    def __init__(
        self,
        P_mean: float = -1.2,
        P_std: float = 1.2,
        sigma_data: float = 0.5,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
    ):
        for k, v in (
            ("P_std", P_std),
            ("sigma_data", sigma_data),
            ("sigma_min", sigma_min),
            ("sigma_max", sigma_max),
        ):
            if not (is_number(v) and v > 0):
                raise ProcessError(f"EDMProcess needs {k} > 0, got {v!r}")
        if not is_number(P_mean):
            raise ProcessError(f"EDMProcess needs a finite P_mean, got {P_mean!r}")
        if sigma_min >= sigma_max:
            raise ProcessError(f"EDMProcess needs sigma_min < sigma_max, got {sigma_min} >= {sigma_max}")
        self.name = "edm"
        self.P_mean, self.P_std = float(P_mean), float(P_std)
        self.sigma_data = float(sigma_data)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def check_t(self, t: Tensor) -> None:
        """Raise if ``t`` is not positive float noise levels σ."""
        if not t.is_floating_point():
            raise ProcessError(f"an EDMProcess needs float noise levels σ, got dtype {t.dtype}")
        if t.numel() and not (t > 0).all():
            raise ProcessError("noise levels σ must be > 0")

    def snr(self, t: Tensor) -> Tensor:
        """SNR(σ) = 1/σ²."""
        return t.float().pow(-2)

    def sigma(self, t: Tensor) -> Tensor:
        """The noise level σ itself: an EDM process is indexed by σ, so this is the identity (the common interface with DiscreteProcess.sigma)."""
        return t.float()

    def precondition(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(c_skip, c_out, c_in, c_noise) of Karras et al. 2022, Table 1 (EDM column)."""
        sd2 = self.sigma_data**2
        s2 = sigma**2
        c_skip = sd2 / (s2 + sd2)
        c_out = sigma * self.sigma_data / (s2 + sd2).sqrt()
        c_in = 1.0 / (s2 + sd2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x = x0 + σ n (Karras et al. 2022, eq. 1 with s(t) = 1)."""
        return x0 + _bcast(t, x0) * noise

    def model_input(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(c_in·x, c_noise): the preconditioned network input (Table 1)."""
        _, _, c_in, c_noise = self.precondition(t.to(x_t.dtype))
        return _bcast(c_in, x_t) * x_t, c_noise

    def target(
        self, x0: Tensor, noise: Tensor, t: Tensor, prediction: str = "v", x_t: Tensor | None = None
    ) -> Tensor:
        """ε → n; x0 → x0; v → EDM's F-target (x0 − c_skip·x)/c_out (Karras et al. 2022, eq. 8)."""
        if prediction != "v":
            return _eps_or_x0_target(x0, noise, prediction)
        if x_t is None:
            x_t = self.add_noise(x0, noise, t)
        c_skip, c_out, _, _ = self.precondition(t.to(x0.dtype))
        return (x0 - _bcast(c_skip, x0) * x_t) / _bcast(c_out, x0)

    def predict_x0(self, out: Tensor, x_t: Tensor, t: Tensor, prediction: str = "v") -> Tensor:
        """D(x; σ): for "v" this is c_skip·x + c_out·F (eq. 7)."""
        _check_prediction(prediction)
        if prediction == "x0":
            return out
        if prediction == "eps":
            return x_t - _bcast(t.to(x_t.dtype), x_t) * out
        c_skip, c_out, _, _ = self.precondition(t.to(x_t.dtype))
        return _bcast(c_skip, x_t) * x_t + _bcast(c_out, x_t) * out

    def predict_eps(self, out: Tensor, x_t: Tensor, t: Tensor, prediction: str = "v") -> Tensor:
        """Noise estimate ε̂ = (x − D(x; σ))/σ from the network output ``out`` at (x, σ) (Karras et al. 2022, eq. 7 with the preconditioned denoiser D)."""
        if prediction == "eps":
            _check_prediction(prediction)
            return out
        x0 = self.predict_x0(out, x_t, t, prediction)
        return (x_t - x0) / _bcast(t.to(x_t.dtype), x_t)

    def __repr__(self) -> str:
        return (
            f"EDMProcess(P_mean={self.P_mean}, P_std={self.P_std}, sigma_data={self.sigma_data}, "
            f"sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"
        )


Process = DiscreteProcess | EDMProcess | FlowProcess


def build(name: str = "linear", **params) -> Process:
    """Build a process from config: ``linear`` (T, beta_start, beta_end), ``cosine`` (T), ``edm`` (EDM parameters),
    ``flow`` (:class:`FlowProcess`: shift, time_scale, eps, grid_min).

    Unknown names or parameters raise :class:`ProcessError` (a ``ValueError``) naming them.
    """
    makers = {
        "linear": DiscreteProcess.linear,
        "cosine": DiscreteProcess.cosine,
        "edm": EDMProcess,
        "flow": FlowProcess,
    }
    if name not in makers:
        raise ProcessError(unknown("process.name", name, makers))
    try:
        check_params("process", f"the {name!r} process", makers[name], params, skip=("self", "cls"))
    except ValueError as e:
        raise ProcessError(str(e)) from None
    maker = makers[name]
    try:
        return maker(**params)
    except TypeError as e:  # wrong type reaching math
        raise ProcessError(f"bad parameter for the {name!r} process: {e}") from None
