"""Loss weightings: a per-sample factor on the loss as a function of the noise level, orthogonal to sampling.

``weighting.build(name, process, prediction, **params)`` returns a :class:`Weighting`: an ``nn.Module`` whose call
``w(t)`` gives the per-sample factor (float32 [B], on ``t``'s device) and whose ``w.weighted(t, per_sample)``
gives the weighted per-sample loss — ``w(t)·per_sample`` for the fixed weightings, and for the learned one
(``edm2-uncertainty``, which has trainable parameters) its own form. One call serves every weighting::

    loss = (draw.weight * w.weighted(draw.t, per_sample)).mean()

Names: ``none``, ``min-snr``, ``soft-min-snr``, ``p2``, ``edm``, ``speed`` (docs/methods.md, "Loss weightings"),
``cosmap`` and ``sigma_sqrt`` (SD3's flow-matching weightings, named as diffusers names them), and
``edm2-uncertainty`` (learned: :class:`Uncertainty`).

One idea keeps every weighting consistent across prediction types: a weighting is first defined as a weight
λ_x0 on the *clean-sample* error ‖x̂0 − x0‖², and :func:`x0_to` turns it into the weight on the error of the
target the network is actually trained on (ε, v or x0), so that the weighted loss is the same number whatever
the prediction type. The conversion factors follow from the process (derivation in :func:`x0_to`):

* ``"eps"``: ‖ε̂ − ε‖² = SNR·‖x̂0 − x0‖² (discrete VP and EDM alike, SNR = ᾱ/(1 − ᾱ) or 1/σ²);
* ``"v"``: ‖v̂ − v‖² = (SNR + 1)·‖x̂0 − x0‖² (discrete VP); on an EDM process "v" is the F-target and
  ‖F̂ − F‖² = ‖x̂0 − x0‖²/c_out² = (SNR + 1/σ_d²)·‖x̂0 − x0‖² (σ_d = ``sigma_data``); on a flow process "v" is
  the velocity ε − x0 and ‖v̂ − v‖² = ‖x̂0 − x0‖²/t'² = (1 + √SNR)²·‖x̂0 − x0‖²;
* ``"x0"``: the clean-sample error itself.

All weights are computed in float64 (from the process's float64 ᾱ table, from σ, or from a flow process's SNR)
and cast to float32 at the end; discrete weightings are tabulated once over t ∈ {0, …, T−1} and gathered per
batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .checks import check_params, checker, is_int, is_number, suggest, unknown
from .process import PREDICTIONS, kind_of

WeightFn = Callable[[Tensor], Tensor]
REGISTRY: dict[str, Callable[..., WeightFn]] = {}


class Weighting(torch.nn.Module):
    """A loss weighting: ``w(t)`` is the per-sample factor, :meth:`weighted` the weighted per-sample loss.

    The fixed weightings wrap a function of the noise level and have no parameters; a learned weighting
    (``edm2-uncertainty``) overrides :meth:`weight` and :meth:`weighted` and has parameters to train with the
    model (``w.parameters()``) and state to checkpoint (``w.state_dict()``).
    """

    def __init__(self, fn: WeightFn | None = None, name: str = ""):
        super().__init__()
        self._fn = fn
        self.name = name

    def weight(self, t: Tensor) -> Tensor:
        """The per-sample factor at noise levels ``t`` (float32, shape [B])."""
        return self._fn(t)

    def forward(self, t: Tensor) -> Tensor:
        """``w(t)`` is :meth:`weight`, so a weighting is also the plain callable it always was."""
        return self.weight(t)

    def weighted(self, t: Tensor, per_sample: Tensor, scale: Tensor | None = None) -> Tensor:
        """The weighted per-sample loss ``w(t)·scale·per_sample`` (``scale``: e.g. a draw's importance weights,
        multiplied in this order so the trainer's loss is the same number it always was)."""
        w = self.weight(t)
        if scale is not None:
            w = w * scale
        return w * per_sample

    def extra_repr(self) -> str:
        return repr(self.name)


def register(name: str):
    """Decorator: register a weighting builder under ``name`` (``weighting.build(name, ...)`` finds it)."""

    def deco(fn):
        REGISTRY[name] = fn
        return fn

    return deco


# -- helpers ------------------------------------------------------------------------------------------------
_check = checker("weighting.")


def x0_to(
    prediction: str, lam_x0: Tensor, snr: Tensor, sigma_data: float = 1.0, v_factor: Tensor | None = None
) -> Tensor:
    """Convert a weight ``lam_x0`` on the clean-sample error ‖x̂0 − x0‖² into the weight on the error of the
    ``prediction`` target that gives the *same* weighted loss: ε → λ/SNR, v → λ/(SNR + 1/σ_d²) (or λ/``v_factor``
    when given), x0 → λ.

    Derivation for the variance-preserving process x_t = a·x0 + s·ε (a = √ᾱ, s = √(1−ᾱ), a² + s² = 1,
    SNR = a²/s²). For a fixed x_t, an estimate x̂0 implies ε̂ = (x_t − a·x̂0)/s, so ε̂ − ε = −(a/s)(x̂0 − x0) and

        ‖ε̂ − ε‖² = SNR·‖x̂0 − x0‖².

    With v = a·ε − s·x0: v̂ − v = a(ε̂ − ε) − s(x̂0 − x0) = −(a²/s + s)(x̂0 − x0) = −(x̂0 − x0)/s, so

        ‖v̂ − v‖² = ‖x̂0 − x0‖²/(1 − ᾱ) = (SNR + 1)·‖x̂0 − x0‖².

    Hence λ_x0·‖x̂0 − x0‖² = (λ_x0/SNR)·‖ε̂ − ε‖² = (λ_x0/(SNR + 1))·‖v̂ − v‖² — the ε and v forms of Min-SNR
    (Hang et al. 2023, arXiv 2303.09556: min(SNR, γ)/SNR and min(SNR, γ)/(SNR + 1)) are this conversion of λ_x0 = min(SNR, γ).

    For the EDM process x = x0 + σ n (SNR = 1/σ²) the ε-factor is the same (n̂ − n = −(x̂0 − x0)/σ), and "v" is
    EDM's F-target with D = c_skip·x + c_out·F, so ‖F̂ − F‖² = ‖x̂0 − x0‖²/c_out² and
    1/c_out² = (σ² + σ_d²)/(σ σ_d)² = SNR + 1/σ_d². Pass ``sigma_data`` = σ_d there; the default 1 is the VP case.

    For the flow process x_t = (1 − t')x0 + t'ε (SNR = ((1 − t')/t')²) with the velocity v = ε − x0: for a fixed
    x_t, x0 = x_t − t'·v, so x̂0 − x0 = −t'(v̂ − v) and ‖v̂ − v‖² = ‖x̂0 − x0‖²/t'²; since √SNR = 1/t' − 1 this is
    (1 + √SNR)²·‖x̂0 − x0‖² — pass ``v_factor`` = (1 + √SNR)² (what the weightings here do on a flow process). The
    ε-factor is SNR again (x̂0 − x0 = −t'/(1 − t')·(ε̂ − ε)).
    """
    if prediction == "x0":
        return lam_x0
    if prediction == "eps":
        return lam_x0 / snr
    if prediction == "v":
        return lam_x0 / (snr + 1.0 / sigma_data**2 if v_factor is None else v_factor)
    raise ValueError(
        f"prediction={prediction!r} is not known{suggest(prediction, PREDICTIONS)}; allowed: eps, v, x0"
    )


def _float_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _v_factor(process, snr: Tensor) -> Tensor:
    """‖v̂ − v‖² / ‖x̂0 − x0‖² on ``process`` (see :func:`x0_to`): SNR + 1 (VP), SNR + 1/σ_d² (EDM's F-target),
    (1 + √SNR)² = 1/t'² (flow velocity)."""
    kind = kind_of(process)
    if kind == "flow":
        return (1.0 + snr.sqrt()).pow(2)
    return snr + (1.0 / float(process.sigma_data) ** 2 if kind == "continuous" else 1.0)


def _from_x0(process, prediction: str, lam_x0: Callable[[Tensor], Tensor]) -> WeightFn:
    """A weighting from an x0-space weight ``lam_x0(snr)`` (float64 in, float64 out), converted by :func:`x0_to`."""

    def convert(snr: Tensor) -> Tensor:
        return x0_to(prediction, lam_x0(snr), snr, v_factor=_v_factor(process, snr))

    return _tabulate(process, convert)


def _from_v(process, prediction: str, w_v: Callable[[Tensor], Tensor]) -> WeightFn:
    """A weighting defined on the error of a flow process's velocity target, ``w_v(t')`` of the noise level t'
    (float64), exactly that for ``"v"`` and converted for ε / x0 so the weighted loss is the same (λ_x0 = w_v/t'²,
    then :func:`x0_to`)."""

    def convert(snr: Tensor) -> Tensor:
        tp = 1.0 / (1.0 + snr.sqrt())  # √SNR = (1 − t')/t'
        if prediction == "v":
            return w_v(tp)
        return x0_to(prediction, w_v(tp) / tp.pow(2), snr)

    return _tabulate(process, convert)


def _tabulate(process, of_snr: Callable[[Tensor], Tensor]) -> WeightFn:
    """Evaluate ``of_snr`` (float64 SNR → weight): once over the whole table for a discrete process (gathered by
    ``t``), per call from σ for an EDM process and from t for a flow process. The result is float32 on ``t``'s
    device."""
    if kind_of(process) == "flow":

        def w_flow(t: Tensor) -> Tensor:
            if not t.is_floating_point():
                raise ValueError(f"a flow process weighting needs float times t, got dtype {t.dtype}")
            return of_snr(process.snr(t.to(torch.float64))).to(torch.float32).reshape(t.shape[0])

        return w_flow
    if process.continuous:

        def w_cont(t: Tensor) -> Tensor:
            if not t.is_floating_point():
                raise ValueError(f"an EDM process weighting needs float noise levels σ, got dtype {t.dtype}")
            sigma = t.to(_float_dtype(t.device))
            return of_snr(sigma.pow(-2)).to(torch.float32).reshape(t.shape[0])

        return w_cont

    ac = process.alphas_cumprod.to(torch.float64)
    table = of_snr(ac / (1.0 - ac)).to(torch.float32)
    return _gather(table)


def _gather(table: Tensor) -> WeightFn:
    """w(t) = table[t] for integer timesteps, with the table copied once per device."""
    on: dict[torch.device, Tensor] = {}

    def w(t: Tensor) -> Tensor:
        if t.is_floating_point() or t.is_complex():
            raise ValueError(f"a discrete process weighting needs integer timesteps, got dtype {t.dtype}")
        tab = on.get(t.device)
        if tab is None:
            tab = on[t.device] = table.to(t.device)
        return tab[t.long().reshape(t.shape[0])]

    return w


# -- the weightings -----------------------------------------------------------------------------------------
@register("none")
def none(process, prediction: str) -> WeightFn:
    """Weight 1 everywhere: the plain MSE on the prediction target (Ho et al. 2020, eq. 14, L_simple)."""

    def w(t: Tensor) -> Tensor:
        return torch.ones(t.shape[0], dtype=torch.float32, device=t.device)

    return w


@register("min-snr")
def min_snr(process, prediction: str, gamma: float = 5.0) -> WeightFn:
    """Min-SNR-γ (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy", arXiv 2303.09556):
    x0-space weight λ_x0 = min(SNR, γ), i.e. min(SNR, γ)/SNR for ε-, min(SNR, γ)/(SNR + 1) for v- and
    min(SNR, γ) for x0-prediction (via :func:`x0_to`). γ = 5 is the paper's default. On an EDM process
    SNR = 1/σ² and "v" (the F-target) converts with SNR + 1/σ_d² (see :func:`x0_to`).
    """
    _check("gamma", gamma, is_number(gamma) and gamma > 0, "a finite number > 0 (the paper uses 5)")
    g = float(gamma)
    return _from_x0(process, prediction, lambda snr: snr.clamp(max=g))


@register("soft-min-snr")
def soft_min_snr(process, prediction: str, gamma: float | None = None) -> WeightFn:
    """Soft-min-SNR (Crowson et al. 2024, "Scalable High-Resolution Pixel-Space Image Synthesis with Hourglass
    Diffusion Transformers", arXiv 2401.11605, loss weighting): the hard minimum of Min-SNR replaced by the harmonic soft minimum,
    x0-space weight λ_x0 = 1/(1/SNR + 1/γ) = SNR·γ/(SNR + γ), converted by :func:`x0_to` (ε: γ/(SNR + γ),
    v: SNR·γ/((SNR + γ)(SNR + 1)), x0: SNR·γ/(SNR + γ)).

    On an EDM process with SNR = 1/σ² and ``gamma=None`` → γ = 1/σ_d², this is exactly the paper's weighting:
    λ_x0 = 1/(σ² + σ_d²), which on the F-target is (σ σ_d)²/(σ² + σ_d²)² (the form written on EDM's F-loss).
    [reconstruction] For a discrete process ``gamma=None`` → 5 (Min-SNR's γ): the project's documented choice,
    not a number from the paper; a flow process also takes γ = 5 (its data, like a discrete process's, in [−1, 1]).
    """
    if gamma is None:
        gamma = 1.0 / process.sigma_data**2 if kind_of(process) == "continuous" else 5.0
    _check("gamma", gamma, is_number(gamma) and gamma > 0, "a finite number > 0, or null for the default")
    g = float(gamma)
    return _from_x0(process, prediction, lambda snr: snr * g / (snr + g))


@register("p2")
def p2(process, prediction: str, k: float = 1.0, gamma: float = 1.0) -> WeightFn:
    """P2 weighting (Choi et al. 2022, "Perception Prioritized Training of Diffusion Models", arXiv 2204.00227):
    λ_t = 1/(k + SNR(t))^γ on the ε-prediction loss (L_simple), k = 1, γ = 1 by default.

    The paper defines it for ε-prediction; for the others it is converted so the weighted loss is unchanged
    (the project's documented choice): λ_x0 = SNR/(k + SNR)^γ, then :func:`x0_to` (v: SNR/((k + SNR)^γ (SNR + 1)),
    x0: SNR/(k + SNR)^γ). On an EDM process SNR = 1/σ².
    """
    _check("k", k, is_number(k) and k >= 0, "a finite number >= 0 (the paper uses 1)")
    _check("gamma", gamma, is_number(gamma) and gamma >= 0, "a finite number >= 0 (the paper uses 0.5 to 2)")
    kk, g = float(k), float(gamma)
    return _from_x0(process, prediction, lambda snr: snr / (kk + snr).pow(g))


@register("edm")
def edm(process, prediction: str, sigma_data: float | None = None) -> WeightFn:
    """EDM's loss weight (Karras et al. 2022, arXiv 2206.00364, Table 1): λ(σ) = (σ² + σ_d²)/(σ σ_d)², applied so that
    the *effective* loss is λ(σ)·‖D(x; σ) − x0‖² whatever the prediction type.

    Since λ(σ) = 1/σ² + 1/σ_d² = SNR + 1/σ_d², this is λ_x0 = SNR + 1/σ_d² converted by :func:`x0_to`:

    * ``"x0"`` → λ(σ);
    * ``"eps"`` → λ(σ)/SNR = λ(σ)·σ² = (σ² + σ_d²)/σ_d²;
    * ``"v"`` on an EDM process (the F-target) → λ(σ)·c_out² = 1 exactly: EDM's preconditioned MSE already *is*
      its weighted loss, so the trainer's plain MSE needs no extra factor;
    * ``"v"`` on a discrete (VP) process → (SNR + 1/σ_d²)/(SNR + 1).

    A discrete process uses its equivalent noise level σ = √((1 − ᾱ)/ᾱ) (``process.sigma(t)``), i.e. SNR = 1/σ²,
    and a flow process its σ = t'/(1 − t') (x_t/(1 − t') = x0 + σε), so "v" there is (SNR + 1/σ_d²)/(1 + √SNR)².
    ``sigma_data=None`` → the EDM process's ``sigma_data``, or EDM's 0.5 for a discrete or flow process (data in
    [−1, 1]).
    """
    edm_process = kind_of(process) == "continuous"
    if sigma_data is None:
        sigma_data = process.sigma_data if edm_process else 0.5
    _check("sigma_data", sigma_data, is_number(sigma_data) and sigma_data > 0, "a finite number > 0")
    inv_sd2 = 1.0 / float(sigma_data) ** 2
    if edm_process and prediction == "v" and inv_sd2 == 1.0 / process.sigma_data**2:
        # the identical expression in numerator and denominator: λ(σ)·c_out² is exactly 1 (no rounding)
        return none(process, prediction)
    return _from_x0(process, prediction, lambda snr: snr + inv_sd2)


@register("speed")
def speed(process, prediction: str, tau: int | None = None, lam: float = 0.6) -> WeightFn:
    """SpeeD's change-aware weighting (Wang et al. 2024, arXiv 2405.17403, §4.2), discrete only:
    w_t = (1 − λ) + (2λ − 1)·(d_t − min d)/(max d − min d) for t < τ, 1 for t ≥ τ, d_t = d/dt (1 − ᾱ_t),
    from :func:`diffusion_curriculum.timesteps.speed.change_aware_weights` (τ = None → 700·T/1000, λ = 0.6).

    SpeeD defines w_t on the ε-prediction loss; for v and x0 it is converted so the weighted loss is unchanged
    (the project's documented choice): λ_x0 = w_t·SNR, then :func:`x0_to`.
    """
    if kind_of(process) == "flow":
        raise ValueError(
            "weighting.name='speed' needs a discrete process (SpeeD weights integer timesteps t ∈ {0, …, T−1}); on "
            "a flow process the speed sampler returns SpeeD's change-aware weights with its draw"
        )
    if process.continuous:
        raise ValueError(
            "weighting.name='speed' needs a discrete process (SpeeD weights integer timesteps t ∈ {0, …, T−1}); "
            "use min-snr, soft-min-snr, p2 or edm with an EDM process"
        )
    T = int(process.T)
    _check(
        "tau",
        tau,
        tau is None or (is_int(tau) and 0 < tau < T),
        f"an integer with 0 < tau < T = {T}, or null for 700·T/1000",
    )
    _check("lam", lam, is_number(lam) and 0.5 <= lam <= 1, "a number in [0.5, 1] (SpeeD uses 0.6)")
    from .timesteps.speed import change_aware_weights

    w_eps = change_aware_weights(process, tau=tau, lam=lam).to(torch.float64).cpu()
    ac = process.alphas_cumprod.to(torch.float64)
    snr = ac / (1.0 - ac)
    table = w_eps if prediction == "eps" else x0_to(prediction, w_eps * snr, snr)
    return _gather(table.to(torch.float32))


def _flow_only(name: str, process) -> None:
    if kind_of(process) != "flow":
        raise ValueError(
            f"weighting.name={name!r} needs a flow process (process.name=flow): it weights the rectified-flow time "
            f"t', which {process!r} does not have"
        )


@register("cosmap")
def cosmap(process, prediction: str) -> WeightFn:
    """SD3's cosine-mapped weighting (Esser et al. 2024, "Scaling Rectified Flow Transformers", §3.1 "Cosine-Mapped
    Timesteps", eqs. 21–22): w(t') = 2/(π(1 − 2t' + 2t'²)), the density of t' = 1 − 1/(tan(πu/2) + 1) for
    uniform u, as a weight (diffusers: ``compute_loss_weighting_for_sd3("cosmap", sigmas)``, sigmas = t'). Flow processes
    only.

    It is defined on the error of the velocity target — the rectified-flow loss, on which weighting by a density
    of t' equals drawing t' from it — so on ``"v"`` the weight is exactly w(t'), and on ε / x0 it is converted
    so the weighted loss is the same (x0: w/t'², ε: w/(t'²·SNR)). (diffusers' SD3 script with its default
    ``precondition_outputs=1`` multiplies its x0-error instead; the Flux scripts multiply the velocity error, as
    here.)
    """
    _flow_only("cosmap", process)
    return _from_v(process, prediction, lambda tp: 2.0 / (math.pi * (1.0 - 2.0 * tp + 2.0 * tp.pow(2))))


@register("sigma_sqrt")
def sigma_sqrt(process, prediction: str) -> WeightFn:
    """diffusers' ``sigma_sqrt`` weighting of SD3 training (``compute_loss_weighting_for_sd3("sigma_sqrt",
    sigmas)`` = σ⁻² with σ = t', the flow noise level; diffusers cites Esser et al. 2024 for its SD3 weightings,
    but no equation there defines this one — the factor is diffusers' own, implemented as diffusers computes it):
    w(t') = t'^{-2} on the error of the velocity target (so on x0 it is t'^{-4}, on ε t'^{-4}/SNR). Flow
    processes only.

    Note: diffusers' SD3 script with ``precondition_outputs=1`` applies σ⁻² to the x0-error, and since
    ‖x̂0 − x0‖² = t'²·‖v̂ − v‖² that product is the plain velocity loss — the ``none`` weighting here.
    """
    _flow_only("sigma_sqrt", process)
    return _from_v(process, prediction, lambda tp: tp.pow(-2))


class Uncertainty(Weighting):
    """EDM2's learned uncertainty weighting (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
    Diffusion Models", arXiv 2312.02696, §5 "Loss weighting", eq. 21): the per-sample loss at noise level σ is

        λ(σ)/e^{u(σ)} · L(σ) + u(σ),

    λ the ``base`` weighting (EDM's λ(σ) by default, converted to the prediction target like every weighting
    here), L the per-sample MSE, and u(σ) a learned log-variance: one linear layer (one output) on ``channels``
    fixed Fourier features cos(2π(f·c_noise + φ)), f ~ N(0, 1), φ ~ U[0, 1), of c_noise = ln(σ)/4 — trained
    with the model. For fixed L, the loss is smallest at e^{u(σ)} = λ(σ)·E[L(σ)], so at the optimum every noise
    level contributes equally: the per-level loss magnitudes are equalised automatically. A discrete process
    uses its equivalent σ(t) = √((1 − ᾱ_t)/ᾱ_t), a flow process its σ(t) = t'/(1 − t').

    Choices of this library [reconstruction]: the layer starts at zero (u ≡ 0: training starts as the ``base``
    weighting) where EDM2 draws random magnitude-preserving weights, and the Fourier frequencies and phases
    come from a fixed ``seed`` so building the weighting touches no global random stream. The trainer adds the
    parameters to its optimizer (own parameter group: the model's learning rate, no weight decay) and saves
    them with the checkpoint.
    """

    def __init__(self, process, prediction: str, base: str = "edm", channels: int = 128, seed: int = 0):
        if base not in REGISTRY or base == "edm2-uncertainty":
            raise ValueError(unknown("weighting.base", base, sorted(set(REGISTRY) - {"edm2-uncertainty"})))
        _check("channels", channels, is_int(channels) and channels >= 1, "an integer >= 1")
        _check("seed", seed, is_int(seed), "an integer")
        super().__init__(REGISTRY[base](process, prediction), "edm2-uncertainty")
        self.continuous = bool(process.continuous)
        #: a flow process's σ(t) (None otherwise: EDM's t is σ, a discrete process has its table)
        self._flow_sigma = process.sigma if kind_of(process) == "flow" else None
        g = torch.Generator().manual_seed(int(seed))
        self.register_buffer("freqs", torch.randn(channels, generator=g))
        self.register_buffer("phases", torch.rand(channels, generator=g))
        if not self.continuous:
            ac = process.alphas_cumprod.to(torch.float64)
            self.register_buffer("c_noise_table", (0.25 * 0.5 * torch.log((1 - ac) / ac)).to(torch.float32))
        # the layer u = weight·features + bias, made by hand so no global random stream is drawn from
        self.u_weight = torch.nn.Parameter(torch.zeros(1, channels))
        self.u_bias = torch.nn.Parameter(torch.zeros(1))

    def c_noise(self, t: Tensor) -> Tensor:
        """c_noise = ln(σ)/4 at the noise levels ``t`` (σ itself for EDM, σ(t) for a discrete or flow process)."""
        if self._flow_sigma is not None:
            return (self._flow_sigma(t).log() / 4).reshape(t.shape[0])
        if self.continuous:
            return (t.float().log() / 4).reshape(t.shape[0])
        return self.c_noise_table[t.long().reshape(t.shape[0])]

    def u(self, t: Tensor) -> Tensor:
        """The learned log-variance u at ``t`` (float32 [B]; differentiable in the layer's parameters)."""
        x = self.c_noise(t)[:, None] * self.freqs[None] + self.phases[None]
        feats = torch.cos(2 * math.pi * x) * math.sqrt(2)
        return torch.nn.functional.linear(feats, self.u_weight, self.u_bias).reshape(-1)

    def weight(self, t: Tensor) -> Tensor:
        """λ(t)/e^{u(t)}, the factor on the per-sample loss (without the + u term)."""
        return self._fn(t) * torch.exp(-self.u(t))

    def weighted(self, t: Tensor, per_sample: Tensor, scale: Tensor | None = None) -> Tensor:
        """scale·(λ/e^u·L + u): the loss EDM2 minimises, per sample."""
        u = self.u(t)
        w = self._fn(t) if scale is None else self._fn(t) * scale
        out = w * torch.exp(-u) * per_sample
        return out + (u if scale is None else scale * u)


@register("edm2-uncertainty")
def edm2_uncertainty(
    process, prediction: str, base: str = "edm", channels: int = 128, seed: int = 0
) -> Weighting:
    """EDM2's learned uncertainty weighting (:class:`Uncertainty`)."""
    return Uncertainty(process, prediction, base=base, channels=channels, seed=seed)


def build(name: str, process, prediction: str = "eps", **params) -> Weighting:
    """A :class:`Weighting` by name; unknown names, parameters or prediction types raise ``ValueError`` naming
    them."""
    if name not in REGISTRY:
        raise ValueError(unknown("weighting.name", name, sorted(REGISTRY)))
    if prediction not in PREDICTIONS:
        raise ValueError(unknown("prediction", prediction, PREDICTIONS))
    fn = REGISTRY[name]
    check_params("weighting", f"the {name!r} weighting", fn, params, skip=("process", "prediction"))
    out = fn(process, prediction, **params)
    return out if isinstance(out, Weighting) else Weighting(out, name)
