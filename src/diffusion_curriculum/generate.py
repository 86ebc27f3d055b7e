"""Image generation from a trained network: DDPM ancestral sampling, DDIM, EDM's Heun sampler, and the Euler /
Heun ODE samplers of a flow process.

(Named apart from *timestep* sampling, which lives in :mod:`diffusion_curriculum.timesteps`.)

Every sampler calls the network as ``model(*process.model_input(x, t))`` and turns its output into a
clean-sample estimate with ``process.predict_x0(out, x, t, prediction)`` (or a noise estimate with
``predict_eps``), so it works with any prediction type the process knows ("eps", "v", "x0").

Randomness: each sampler draws all its noise from ``generator`` in a fixed order — the initial noise first,
then at most one draw per step — so two calls with generators seeded alike inject *identical* noise (what the
consistency analysis needs to compare two models). Noise is drawn on the generator's device and then moved to
``device``; :func:`sample` uses one CPU generator by default, so its results do not depend on the accelerator's
RNG, or one generator per chunk on the device (``seeding="per-chunk"``, which evaluation split over processes
needs: :mod:`diffusion_curriculum.shards`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from . import shards
from .checks import check_value, is_int, is_number
from .guidance import Guided, guided
from .process import DiscreteProcess, EDMProcess, FlowProcess, kind_of
from .step_grids import ddim_timesteps, edm_sigmas

__all__ = [
    "AUTO",
    "GENERATORS",
    "Clip",
    "METHODS",
    "Method",
    "ddim",
    "ddim_timesteps",
    "clip_bounds",
    "ddpm",
    "edm_heun",
    "edm_sigmas",
    "flow_euler",
    "flow_heun",
    "method_for",
    "sample",
]

StepNoises = Tensor | Callable[[int], Tensor] | None
#: ``clip_x0``: ``True`` clamps x̂0 to [-1, 1] (images scaled there), ``(low, high)`` to those bounds,
#: ``False`` / ``None`` not at all (2-D points and other unbounded data)
Clip = bool | tuple[float, float] | None


def clip_bounds(clip_x0: Clip) -> tuple[float, float] | None:
    """The (low, high) a ``clip_x0`` setting clamps x̂0 to, or ``None`` for no clipping; a ValueError for
    anything else."""
    if clip_x0 is None or clip_x0 is False:
        return None
    if clip_x0 is True:
        return (-1.0, 1.0)
    ok = isinstance(clip_x0, (tuple, list)) and len(clip_x0) == 2 and all(is_number(v) for v in clip_x0)
    if not ok or not clip_x0[0] < clip_x0[1]:
        raise ValueError(
            f"clip_x0={clip_x0!r} is not allowed; use True, False or (low, high) with low < high"
        )
    return float(clip_x0[0]), float(clip_x0[1])


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, device) -> Tensor:
    """Standard normal noise drawn from ``generator`` (on its own device), then moved to ``device``."""
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def _initial_noise(noise: Tensor | None, shape: tuple[int, ...], generator, device) -> Tensor:
    """The starting noise: ``noise`` itself (as float32 on ``device``) when given, else a draw from ``generator``."""
    x = _randn(shape, generator, device) if noise is None else noise.to(device=device, dtype=torch.float32)
    if tuple(x.shape) != shape:
        raise ValueError(f"noise has shape {tuple(x.shape)} but shape={shape}")
    return x


def _as_long_batch(t: int, n: int, device) -> Tensor:
    return torch.full((n,), int(t), dtype=torch.long, device=device)


def _require_discrete(process, who: str) -> None:
    if getattr(process, "continuous", False) or not isinstance(process, DiscreteProcess):
        raise ValueError(
            f"{who} needs a DiscreteProcess, got {process!r}; use method='heun' for an EDMProcess"
        )


# ------------------------------------------------------------------------------------------------------
# DDPM
# ------------------------------------------------------------------------------------------------------
@torch.no_grad()
def ddpm(
    model,
    process: DiscreteProcess,
    shape: tuple[int, ...],
    *,
    prediction: str = "eps",
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    noise: Tensor | None = None,
    step_noises: StepNoises = None,
    clip_x0: Clip = True,
    variance: str = "posterior",
) -> Tensor:
    """Ancestral sampling through all T steps (Ho et al. 2020, Algorithm 2).

    At each t = T−1, …, 0 the network's output gives x̂0 = ``process.predict_x0`` (clamped to [-1, 1] when
    ``clip_x0`` is True, to (low, high) when it is a pair; see :func:`clip_bounds`), and x_{t−1} is drawn
    from the Gaussian posterior q(x_{t−1} | x_t, x̂0) with mean
    μ̃_t = sqrt(ᾱ_{t−1}) β_t / (1 − ᾱ_t) · x̂0 + sqrt(α_t)(1 − ᾱ_{t−1}) / (1 − ᾱ_t) · x_t (Ho et al. eq. 7).
    Without clipping this equals Algorithm 2's 1/sqrt(α_t) (x_t − β_t / sqrt(1 − ᾱ_t) ε̂) (eq. 11).
    The variance σ_t² is β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) β_t (``variance="posterior"``, eq. 7) or β_t
    (``variance="beta"``); both are discussed in Ho et al. §3.2. The last step (t = 0) adds no noise.

    ``noise`` is the initial x_T (else drawn from ``generator``). ``step_noises`` optionally supplies the
    noise injected when stepping from x_t to x_{t−1}: a tensor indexed by t (``step_noises[t]`` shaped like
    ``shape``; entry 0 is unused) or a callable ``t -> Tensor``. Otherwise one draw per step t ≥ 1 comes from
    ``generator``, after the initial noise.
    """
    _require_discrete(process, "ddpm")
    bounds = clip_bounds(clip_x0)
    if variance not in ("posterior", "beta"):
        raise ValueError(f"variance={variance!r} is not known; allowed: posterior, beta")
    device = torch.device(device)
    shape = tuple(shape)
    x = _initial_noise(noise, shape, generator, device)

    ac = process.alphas_cumprod  # float64 on CPU
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    betas = process.betas
    alphas = 1.0 - betas
    coef_x0 = (ac_prev.sqrt() * betas / (1.0 - ac)).tolist()
    coef_xt = (alphas.sqrt() * (1.0 - ac_prev) / (1.0 - ac)).tolist()
    if variance == "posterior":
        sigma = ((1.0 - ac_prev) / (1.0 - ac) * betas).sqrt().tolist()
    else:
        sigma = betas.sqrt().tolist()

    n = shape[0]
    for t in range(process.T - 1, -1, -1):
        t_batch = _as_long_batch(t, n, device)
        out = model(*process.model_input(x, t_batch))
        x0 = process.predict_x0(out.float(), x, t_batch, prediction)
        if bounds is not None:
            x0 = x0.clamp(*bounds)
        mean = coef_x0[t] * x0 + coef_xt[t] * x
        if t > 0:
            z = _step_noise(step_noises, t, shape, generator, device)
            x = mean + sigma[t] * z
        else:
            x = mean
    return x


def _step_noise(step_noises: StepNoises, t: int, shape, generator, device) -> Tensor:
    if step_noises is None:
        return _randn(shape, generator, device)
    z = step_noises(t) if callable(step_noises) else step_noises[t]
    z = torch.as_tensor(z).to(device=device, dtype=torch.float32)
    if tuple(z.shape) != tuple(shape):
        raise ValueError(f"step_noises gave shape {tuple(z.shape)} at t={t}, expected {tuple(shape)}")
    return z


# ------------------------------------------------------------------------------------------------------
# DDIM
# ------------------------------------------------------------------------------------------------------
@torch.no_grad()
def ddim(
    model,
    process: DiscreteProcess,
    shape: tuple[int, ...],
    *,
    steps: int = 50,
    eta: float = 0.0,
    prediction: str = "eps",
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    clip_x0: Clip = True,
    noise: Tensor | None = None,
) -> Tensor:
    """DDIM sampling (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12).

    x_{t'} = sqrt(ᾱ_{t'}) x̂0 + sqrt(1 − ᾱ_{t'} − σ²) ε̂ + σ z, with
    σ = η · sqrt((1 − ᾱ_{t'}) / (1 − ᾱ_t)) · sqrt(1 − ᾱ_t / ᾱ_{t'}) (eq. 16), over the timesteps of
    :func:`ddim_timesteps` (t' is the next one; after t = 0 comes ᾱ = 1, i.e. the output is x̂0).
    η = 0 is the deterministic DDIM, η = 1 DDPM-like ancestral sampling on the sub-sequence.

    With ``clip_x0`` the estimate x̂0 is clamped to [-1, 1] (or to the (low, high) given; see
    :func:`clip_bounds`) and ε̂ is recomputed from the clamped x̂0 as
    (x_t − sqrt(ᾱ_t) x̂0) / sqrt(1 − ᾱ_t) (eq. 9 solved for ε), so the step stays consistent with x_t.
    Randomness: the initial noise (unless ``noise`` is given), then one draw per step where σ > 0.
    """
    _require_discrete(process, "ddim")
    check_value("eta", eta, is_number(eta) and eta >= 0, "a finite number >= 0")
    bounds = clip_bounds(clip_x0)
    device = torch.device(device)
    shape = tuple(shape)
    ts = ddim_timesteps(process.T, steps)
    x = _initial_noise(noise, shape, generator, device)
    ac = process.alphas_cumprod.tolist()
    n = shape[0]
    for i, t in enumerate(ts):
        a_t = ac[t]
        a_prev = ac[ts[i + 1]] if i + 1 < len(ts) else 1.0
        t_batch = _as_long_batch(t, n, device)
        out = model(*process.model_input(x, t_batch)).float()
        if bounds is not None:
            x0 = process.predict_x0(out, x, t_batch, prediction).clamp(*bounds)
            eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1.0 - a_t)
        else:
            x0 = process.predict_x0(out, x, t_batch, prediction)
            eps = process.predict_eps(out, x, t_batch, prediction)
        sigma = eta * math.sqrt(max(0.0, (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)))
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(0.0, 1.0 - a_prev - sigma**2)) * eps
        if sigma > 0:
            x = x + sigma * _randn(shape, generator, device)
    return x


# ------------------------------------------------------------------------------------------------------
# EDM Heun
# ------------------------------------------------------------------------------------------------------
@torch.no_grad()
def edm_heun(
    model,
    process: EDMProcess,
    shape: tuple[int, ...],
    *,
    steps: int = 18,
    rho: float = 7.0,
    prediction: str = "v",
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    S_churn: float = 0.0,
    S_tmin: float = 0.0,
    S_tmax: float = float("inf"),
    S_noise: float = 1.0,
    noise: Tensor | None = None,
) -> Tensor:
    """EDM's 2nd-order Heun sampler (Karras et al. 2022, Algorithm 2; with ``S_churn = 0`` it is Algorithm 1).

    σ_i from :func:`edm_sigmas` (eq. 5) with the process's sigma_min / sigma_max; x_0 = σ_0 · n. Each step:
    (churn, Alg. 2 lines 4–6) γ_i = min(S_churn/N, √2 − 1) if S_tmin ≤ σ_i ≤ S_tmax else 0, σ̂ = σ_i (1 + γ_i),
    x̂ = x_i + sqrt(σ̂² − σ_i²) S_noise ε; then the Euler step d = (x̂ − D(x̂; σ̂)) / σ̂,
    x_{i+1} = x̂ + (σ_{i+1} − σ̂) d, corrected by the trapezoidal rule with d' at σ_{i+1} unless σ_{i+1} = 0
    (the last step is plain Euler). D(x; σ) = ``process.predict_x0(model(*process.model_input(x, σ)), x, σ,
    prediction)`` (eq. 7 for "v"). The loop runs in float64 like the reference; the network sees float32.
    Randomness: the initial noise (unless ``noise`` is given), then one draw per step with γ_i > 0.
    """
    if not isinstance(process, EDMProcess):
        raise ValueError(f"edm_heun needs an EDMProcess, got {process!r}; use method='ddim' or 'ddpm'")
    if not (isinstance(S_churn, (int, float)) and S_churn >= 0):
        raise ValueError(f"S_churn must be a number >= 0, got {S_churn!r}")
    device = torch.device(device)
    shape = tuple(shape)
    sigmas = edm_sigmas(steps, process.sigma_min, process.sigma_max, rho).tolist()
    n = shape[0]

    def denoise(x: Tensor, s: float) -> Tensor:
        s_batch = torch.full((n,), s, dtype=torch.float32, device=device)
        x32 = x.float()
        out = model(*process.model_input(x32, s_batch))
        return process.predict_x0(out.double(), x, s_batch.double(), prediction)

    x = _initial_noise(noise, shape, generator, device).double() * sigmas[0]
    for i in range(steps):
        s_cur, s_next = sigmas[i], sigmas[i + 1]
        gamma = min(S_churn / steps, math.sqrt(2.0) - 1.0) if S_tmin <= s_cur <= S_tmax else 0.0
        s_hat = s_cur * (1.0 + gamma)
        if gamma > 0:
            eps = _randn(shape, generator, device).double()
            x = x + math.sqrt(s_hat**2 - s_cur**2) * S_noise * eps
        d = (x - denoise(x, s_hat)) / s_hat
        x_next = x + (s_next - s_hat) * d
        if s_next > 0:
            d_next = (x_next - denoise(x_next, s_next)) / s_next
            x_next = x + (s_next - s_hat) * (0.5 * d + 0.5 * d_next)
        x = x_next
    return x.float()


# ------------------------------------------------------------------------------------------------------
# flow ODE (Euler, Heun)
# ------------------------------------------------------------------------------------------------------
def _flow_ode(model, process: FlowProcess, shape, *, steps, prediction, generator, device, noise, heun: bool):
    if kind_of(process) != "flow":
        raise ValueError(f"flow_euler / flow_heun need a FlowProcess, got {process!r}; use method='auto'")
    check_value("steps", steps, is_int(steps) and steps >= 1, "a positive integer")
    device = torch.device(device)
    shape = tuple(shape)
    grid = process.grid(steps).tolist()  # unshifted t: what the process (and the network) is given
    levels = process.shifted_grid(steps).tolist()  # t' = shift(t): what x moves through
    n = shape[0]

    def velocity(x: Tensor, u: float) -> Tensor:
        u_batch = torch.full((n,), u, dtype=torch.float64, device=device)
        out = model(*process.model_input(x.float(), u_batch))
        return process.predict_v(out.double(), x, u_batch, prediction)

    x = _initial_noise(noise, shape, generator, device).double()  # x at t' = 1 is pure noise
    for i in range(steps):
        dt = levels[i + 1] - levels[i]
        d = velocity(x, grid[i])
        x_next = x + dt * d
        if heun and levels[i + 1] > 0:
            x_next = x + dt * 0.5 * (d + velocity(x_next, grid[i + 1]))
        x = x_next
    return x.float()


@torch.no_grad()
def flow_euler(
    model,
    process: FlowProcess,
    shape: tuple[int, ...],
    *,
    steps: int = 50,
    prediction: str = "v",
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    noise: Tensor | None = None,
) -> Tensor:
    """Euler integration of the flow ODE dx/dt' = v(x, t') from t' = 1 (pure noise) to 0 (Liu et al. 2023, §2.1;
    the step of diffusers' ``FlowMatchEulerDiscreteScheduler``): x ← x + (t'_{i+1} − t'_i)·v̂(x, t_i) over the grid
    t'_i = shift(t_i) of :meth:`FlowProcess.shifted_grid` (evenly spaced t from 1, shifted; last t' = 0).

    v̂ = ``process.predict_v(model(*process.model_input(x, t_i)), x, t_i, prediction)``, so ε and x0 networks work
    too. The loop runs in float64; the network sees float32. Randomness: only the initial noise (unless ``noise``
    is given) — the sampler is deterministic.
    """
    return _flow_ode(
        model,
        process,
        shape,
        steps=steps,
        prediction=prediction,
        generator=generator,
        device=device,
        noise=noise,
        heun=False,
    )


@torch.no_grad()
def flow_heun(
    model,
    process: FlowProcess,
    shape: tuple[int, ...],
    *,
    steps: int = 25,
    prediction: str = "v",
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    noise: Tensor | None = None,
) -> Tensor:
    """Heun's 2nd-order integration of the flow ODE on the grid of :func:`flow_euler` (the trapezoidal correction of
    Karras et al. 2022, Algorithm 1, in t' instead of σ): x̃ = x + Δt'·v̂(x, t_i), then
    x ← x + Δt'·(v̂(x, t_i) + v̂(x̃, t_{i+1}))/2, except on the last step to t' = 0, which is plain Euler. Two network
    evaluations per step but the last; deterministic after the initial noise.
    """
    return _flow_ode(
        model,
        process,
        shape,
        steps=steps,
        prediction=prediction,
        generator=generator,
        device=device,
        noise=noise,
        heun=True,
    )


# ------------------------------------------------------------------------------------------------------
# dispatcher
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """A generation method :func:`sample` dispatches to by name.

    ``fn(model, process, shape, prediction=, generator=, device=, **options)`` makes one chunk of samples;
    ``process`` is the kind of process it needs (``discrete``, ``continuous`` — an :class:`EDMProcess` — or
    ``flow``, see :func:`~diffusion_curriculum.process.kind_of`); ``default_steps`` is its step
    count when the caller gives none (``None``: it takes no ``steps`` — DDPM walks all T); ``options`` are the
    further keywords of :func:`sample` it takes (``eta``, ``clip_x0``).
    """

    fn: Callable[..., Tensor]
    process: str
    default_steps: int | None
    options: tuple[str, ...] = ()


#: The generation methods by name; a new one is its function above and one entry here.
GENERATORS: dict[str, Method] = {
    "ddpm": Method(ddpm, process="discrete", default_steps=None, options=("clip_x0",)),
    "ddim": Method(ddim, process="discrete", default_steps=50, options=("eta", "clip_x0")),
    "heun": Method(edm_heun, process="continuous", default_steps=18),
    "flow-euler": Method(flow_euler, process="flow", default_steps=50),
    "flow-heun": Method(flow_heun, process="flow", default_steps=25),
}
#: ``auto`` (chosen by the process, see :data:`AUTO`) and every name of :data:`GENERATORS`.
METHODS = ("auto", *GENERATORS)
#: What ``method="auto"`` picks for each process kind.
AUTO = {"discrete": "ddim", "continuous": "heun", "flow": "flow-euler"}
_KIND_NAMES = {"discrete": "a DiscreteProcess", "continuous": "an EDMProcess", "flow": "a FlowProcess"}


def _resolve_method(method: str, process, steps, eta, key: str = "method") -> tuple[str, Method]:
    """Resolve ``auto``; check that the method fits the process and that ``steps`` / ``eta`` apply to it (an
    error names the method as ``key``: the argument, or the config key that set it)."""
    kind = kind_of(process)
    method = AUTO[kind] if method == "auto" else method
    spec = GENERATORS[method]
    if spec.process != kind:
        fits = dict.fromkeys([AUTO[kind], *(m for m, g in GENERATORS.items() if g.process == kind)])
        alternatives = " or ".join(repr(m) for m in fits)
        raise ValueError(
            f"{key}={method!r} needs {_KIND_NAMES[spec.process]}; use {key}={alternatives} for "
            f"{_KIND_NAMES[kind]}"
        )
    return method, spec


def method_for(process, method: str = "auto", key: str = "method") -> str:
    """The generation method ``method`` names for ``process`` (``auto`` resolved by :data:`AUTO`); a
    ``ValueError`` in one sentence naming ``key`` when it is unknown or does not fit the process (what the trainer
    checks before a run starts, with ``key="eval.method"``)."""
    if method not in METHODS:
        raise ValueError(f"{key}={method!r} is not known; allowed: {', '.join(METHODS)}")
    return _resolve_method(method, process, None, 0.0, key)[0]


def config_steps(process, method: str, steps: int | None) -> int | None:
    """The steps to generate with, from a config's ``eval.steps``: ``None`` for a method that always takes all T
    steps (``ddpm``), where the setting does not apply, else ``steps``."""
    resolved = _resolve_method(method, process, None, 0.0)[0] if method in METHODS else method
    return None if resolved == "ddpm" else steps


def sample(
    model,
    process: DiscreteProcess | EDMProcess,
    n: int,
    data_shape: tuple[int, ...],
    *,
    method: str = "auto",
    steps: int | None = None,
    eta: float = 0.0,
    prediction: str | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    clip_x0: Clip = True,
    labels: Tensor | Sequence[int] | None = None,
    guidance: float = 1.0,
    seeding: str = "stream",
    shard: tuple[int, int] = (0, 1),
) -> Tensor:
    """Generate ``n`` samples of shape ``data_shape`` (returned as ``[n, *data_shape]`` on ``device``).

    ``method``: ``"auto"`` (Heun for an :class:`EDMProcess`, DDIM for a :class:`DiscreteProcess`, flow Euler for
    a :class:`FlowProcess`), ``"ddpm"`` (all T steps; ``steps`` must be None or T), ``"ddim"`` (default 50 steps,
    ``eta``), ``"heun"`` (default 18 steps), ``"flow-euler"`` (default 50) or ``"flow-heun"`` (default 25); see
    :data:`GENERATORS`. ``prediction`` defaults to "v" for EDM and flow and "eps" for discrete processes.
    The samples are made in chunks of ``batch_size``. With ``seeding="stream"`` (the default) noise comes from one
    CPU ``torch.Generator`` seeded with ``seed``, chunk after chunk, and is moved to ``device``: a result depends
    on (seed, batch_size) and not on the device's RNG. With ``seeding="per-chunk"`` each chunk draws from its own
    generator on ``device`` (:func:`~diffusion_curriculum.shards.chunk_seed`): no copy from the host, and a chunk
    does not depend on the others, so ``shard=(rank, world)`` makes only that rank's chunks
    (:func:`~diffusion_curriculum.shards.chunks`; concatenated in order, to be put back together by
    :func:`~diffusion_curriculum.shards.gather_chunks`) and the union over ranks equals ``world=1``'s samples on
    the same device type. The model is put in eval mode during sampling and its mode
    restored afterwards. ``clip_x0`` applies to DDPM and DDIM (EDM's Heun never clips): ``True`` clamps each
    x̂0 to [-1, 1], a pair ``(low, high)`` to those bounds, ``False`` / ``None`` not at all — pass the data's
    range (:attr:`Dataset.value_range`; the trainer, ``sample`` and ``evaluate`` use the config's ``eval.clip``
    through :func:`~diffusion_curriculum.training.components.clip_range`), since 2-D points clamped to
    [-1, 1] end on the edges of a square.

    ``labels`` (``n`` class indices) samples a class-conditional model with classifier-free guidance at scale
    ``guidance`` (:func:`~diffusion_curriculum.guidance.guided`: w = 1 conditional, w = 0 unconditional,
    otherwise one batched forward of both branches), in every method; ``guidance`` needs ``labels``.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not known; allowed: {', '.join(METHODS)}")
    method, spec = _resolve_method(method, process, steps, eta)
    check_value("n", n, is_int(n) and n >= 1, "a positive integer")
    check_value("batch_size", batch_size, is_int(batch_size) and batch_size >= 1, "a positive integer")
    if spec.default_steps is None and steps is not None and steps != process.T:
        raise ValueError(
            f"steps={steps} does not apply to method={method!r}, which always takes all T={process.T} steps"
        )
    if "eta" not in spec.options and eta != 0:
        raise ValueError(f"eta={eta!r} applies only to method='ddim', not method={method!r}")
    kwargs = {k: v for k, v in (("eta", eta), ("clip_x0", clip_x0)) if k in spec.options}
    if spec.default_steps is not None:
        kwargs["steps"] = spec.default_steps if steps is None else steps
    continuous = bool(getattr(process, "continuous", False))
    kwargs["prediction"] = prediction if prediction is not None else "v" if continuous else "eps"
    kwargs["device"] = torch.device(device)
    rank, world = shard
    if not (is_int(rank) and is_int(world) and 0 <= rank < world):
        raise ValueError(f"shard={shard!r} is not (rank, world) with 0 <= rank < world")
    if seeding not in shards.SEEDINGS:
        raise ValueError(f"seeding={seeding!r} is not known; allowed: {', '.join(shards.SEEDINGS)}")
    if seeding == "stream" and world != 1:
        raise ValueError(
            "shard needs seeding='per-chunk': under 'stream' each chunk continues the one before"
        )
    stream = torch.Generator().manual_seed(int(seed)) if seeding == "stream" else None
    if labels is None and guidance != 1.0:
        raise ValueError(f"guidance={guidance!r} needs labels: only a class-conditional model is guided")
    cond = None if labels is None else guided(model, labels, guidance)
    if cond is not None and cond.labels.shape[0] != n:
        raise ValueError(f"labels has {cond.labels.shape[0]} entries but n={n}; give one label per sample")

    was_training = getattr(model, "training", None)
    if was_training is not None and hasattr(model, "eval"):
        model.eval()
    try:
        made = []
        for chunk in shards.chunks(n, batch_size, rank, world):
            shape = (chunk.size, *tuple(data_shape))
            at = slice(chunk.start, chunk.start + chunk.size)
            net = model if cond is None else Guided(model, cond.labels[at], guidance, cond.null_class)
            g = stream or torch.Generator(kwargs["device"]).manual_seed(shards.chunk_seed(seed, chunk.index))
            made.append(spec.fn(net, process, shape, generator=g, **kwargs))
        if not made:  # a rank with no chunk (fewer chunks than ranks)
            return torch.empty((0, *tuple(data_shape)), device=kwargs["device"])
        return torch.cat(made)
    finally:
        if was_training is not None and hasattr(model, "train"):
            model.train(was_training)
