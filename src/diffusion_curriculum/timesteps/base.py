"""The timestep-sampler interface every strategy implements, and the registry that builds them by name.

A sampler decides *which noise levels* a batch trains on and with what per-sample weight (the abstraction of
improved-diffusion's ``ScheduleSampler``, Nichol & Dhariwal 2021, extended with ``observe`` so curricula can
watch the loss and with a plain-value ``state_dict`` so resume is exact)::

    draw = sampler.sample(batch_size, device=device, generator=g)   # Draw(t, weight)
    loss = (draw.weight * per_sample_loss).mean()
    sampler.observe(draw.t, per_sample_loss.detach())               # once per optimizer step

``observe`` advances the sampler's step counter even when the strategy ignores losses, so step-scheduled
strategies (CLTS) stay in step with the optimizer. A strategy that learns from the losses reads them a few steps
late, from statistics gathered on their device (:mod:`~.observations`), so neither call makes the host wait for
a GPU (docs/design.md, "The device contract"). ``state_dict`` holds only tensors, numbers, strings, lists and
dicts of those.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..checks import check_param, check_params, is_int, is_number, suggest, unknown
from ..device import check_generator, to_device
from ..process import kind_of
from .observations import LaggedStats

# the value checks every strategy file imports from here (their one home is :mod:`diffusion_curriculum.checks`)
__all__ = [
    "Draw",
    "TimestepSampler",
    "build",
    "build_spec",
    "check_choice",
    "check_param",
    "is_int",
    "is_number",
]


@dataclass
class Draw:
    """One batch's noise levels and per-sample loss weights.

    ``t``: ``Long`` timesteps for a discrete process, float σ for an EDM process, float t in (0, 1) for a flow
    process (the unshifted time; the process applies its shift); shape [B].
    ``weight``: float32, shape [B]; 1 where the strategy does not reweight.
    """

    t: Tensor
    weight: Tensor


def check_choice(name: str, value, allowed: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming a sampler parameter whose value is not one of ``allowed`` (with the nearest
    name, when one is close)."""
    if value not in allowed:
        raise ValueError(
            f"sampler parameter {name}={value!r} is invalid{suggest(value, allowed)}; "
            f"allowed: {', '.join(allowed)}"
        )


def on_cpu(fn):
    """Run ``fn`` with the CPU as torch's default device: a sampler's state and draws live on the CPU whatever
    ``torch.set_default_device`` says (tensors it builds on the losses' device name that device)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if torch.get_default_device().type == "cpu":
            return fn(*args, **kwargs)
        with torch.device("cpu"):
            return fn(*args, **kwargs)

    return wrapper


class TimestepSampler:
    """Base class. Subclasses implement :meth:`_draw` and, when they watch losses or keep state,
    :meth:`_observe`, :meth:`_state` / :meth:`_load_state` and :meth:`status`.

    Every sampler takes ``total_steps`` (the planned number of optimizer steps, ``None`` when unknown) so
    step-scheduled strategies can express their schedule as fractions of it.
    """

    name: ClassVar[str] = "base"
    #: which process kinds the strategy supports: "discrete", "continuous" (EDM's σ) and "flow"
    #: (:class:`~diffusion_curriculum.process.FlowProcess`); a sampler that does not name a kind refuses it
    supports: ClassVar[tuple[str, ...]] = ("discrete", "continuous")
    #: parameters whose default changed, each with the default it had before: the sampler saves their values in
    #: its state, and a checkpoint written before (without the key) is refused when the value it ran with
    #: differs from today's — with the line to add to the run's config — instead of resuming with other settings
    CHANGED_DEFAULTS: ClassVar[dict[str, Any]] = {}
    #: a sampler that learns from the losses names how its per-step statistics combine over the ranks
    #: (``"sum"`` or ``"gather"``, see :class:`~.observations.LaggedStats`); ``None``: it reads no loss
    reduce: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:  # a strategy's own state is built on the CPU (see :func:`on_cpu`)
            cls.__init__ = on_cpu(cls.__init__)

    def __init__(self, process, total_steps: int | None = None):
        kind = kind_of(process)
        if kind not in self.supports:
            raise ValueError(
                f"sampler {self.name!r} does not support a {kind} process ({process!r}); "
                f"it supports: {', '.join(self.supports)}"
            )
        check_param(
            "total_steps",
            total_steps,
            total_steps is None or (is_int(total_steps) and total_steps > 0),
            "a positive integer or None",
        )
        self.process = process
        self._settings: dict[str, tuple[Any, bool]] = {}
        #: the process kind (``discrete``, ``continuous`` or ``flow``) the draws are made for
        self.kind = kind
        self.total_steps = total_steps
        self.step = 0
        #: the lagged loss statistics of a sampler that learns from the losses (None for one that does not)
        self._lagged: LaggedStats | None = LaggedStats(self.reduce) if self.reduce else None

    # -- the public interface ---------------------------------------------------------------------
    @on_cpu
    def sample(self, batch_size: int, device=None, generator: torch.Generator | None = None) -> Draw:
        """Draw noise levels and weights for a batch. Random numbers come from ``generator`` — a CPU
        ``torch.Generator`` (one on another device is refused in one sentence: the draw is a few hundred numbers,
        made on the CPU whatever ``device`` is) — or from torch's global CPU generator; the draw reaches
        ``device`` by a non-blocking copy (:func:`~diffusion_curriculum.device.to_device`), the unit weight of a
        strategy that does not reweight is made there directly. Nothing depends on torch's default device."""
        if not is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is invalid; allowed: a positive integer")
        check_generator(generator, f"the {self.name!r} sampler")
        t, w = self._draw(batch_size, generator)
        t = to_device(t, device)
        if w is None:
            w = torch.ones(batch_size, dtype=torch.float32, device=t.device)
        return Draw(t, to_device(w, device))

    @on_cpu
    def observe(self, t: Tensor, per_sample_loss: Tensor) -> None:
        """Report the batch's per-sample losses; call once per optimizer step (advances the step counter).

        ``t`` is the draw's noise levels (shape [B]) and ``per_sample_loss`` one loss per sample (shape [B]);
        anything else is a ``ValueError`` that says what was passed, for every sampler, whether or not it reads
        the losses. Samplers that read the values refuse non-finite ones (``ddc``) or drop them
        (``loss-second-moment``, ``learning-progress``), as each one documents.
        """
        check_observation(t, per_sample_loss)
        self._observe(t, per_sample_loss)
        self.step += 1

    def set_group(self, group: Any) -> None:
        """Combine the loss statistics over ``group`` (a ``torch.distributed`` process group) instead of the
        default group: for a sampler shared by the ranks of one group only."""
        if self._lagged is not None:
            self._lagged.group = group

    def _lagged_observations(self, stats: Tensor, tag: Any = None) -> list[tuple[Tensor, Any, int]]:
        """Queue one step's loss statistics (on the losses' device) and return those now due on the host
        (:class:`~.observations.LaggedStats`); the sampler applies them to its state, in order."""
        return self._lagged.push(stats, tag)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: plain tensors, numbers and strings only."""
        settings = {k: v for k, (v, _) in self._settings.items()}
        out = {"name": self.name, "step": self.step, **settings, **self._state()}
        if self._lagged is not None:
            out["observations"] = self._lagged.state_dict()
        return out

    @on_cpu
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; refuses the state of a different strategy, or one that ran with another
        value of a parameter in :attr:`CHANGED_DEFAULTS`, with a ``ValueError``."""
        if state.get("name", self.name) != self.name:
            raise ValueError(f"sampler state is for {state.get('name')!r}, not {self.name!r}")
        for key, (value, given) in self._settings.items():
            # a state without the key was written when the value was the configured one, or the old default
            saved = state.get(key, value if given else self.CHANGED_DEFAULTS[key])
            if saved != value:
                raise ValueError(
                    f"{self.name}: this checkpoint was trained with {key}={saved!r} but the run's sampler now has "
                    f"{key}={value!r} (the default changed from {self.CHANGED_DEFAULTS[key]!r}); add "
                    f"'{key}: {saved}' to the sampler section of the run's config.yaml to resume it as it was"
                )
        self.step = int(state["step"])
        self._load_state(state)
        if self._lagged is not None:  # a checkpoint from before the lag has none pending
            self._lagged.load_state_dict(state.get("observations"))

    def _record_setting(self, key: str, value: Any, given: bool) -> None:
        """Save ``key``'s value (one of :attr:`CHANGED_DEFAULTS`) in the state; ``given``: set by the user."""
        self._settings[key] = (value, given)

    def status(self) -> dict[str, Any]:
        """A small dict for progress bars and logs, e.g. ``{"stage": 3, "stages": 20}``."""
        return {}

    # -- hooks --------------------------------------------------------------------------------------
    def _draw(self, batch_size: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def _observe(self, t: Tensor, per_sample_loss: Tensor) -> None:
        pass

    def _state(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: dict[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}(process={self.process!r}, step={self.step})"


def check_observation(t, per_sample_loss) -> None:
    """Raise ``ValueError`` unless ``t`` and ``per_sample_loss`` are tensors of the same shape [B] (no device
    sync: only shapes are read)."""
    for name, v in (("t", t), ("per_sample_loss", per_sample_loss)):
        if not isinstance(v, Tensor):
            raise ValueError(f"observe expects tensors; {name} is a {type(v).__name__}")
    if t.dim() != 1:
        raise ValueError(
            f"observe expects t of shape [B], as sample() returns it; got shape {tuple(t.shape)}"
        )
    if tuple(per_sample_loss.shape) != tuple(t.shape):
        raise ValueError(
            f"observe got {t.shape[0]} timesteps but per-sample losses of shape {tuple(per_sample_loss.shape)}; "
            f"pass one loss per sample (shape [{t.shape[0]}]): reduce every other dimension first, e.g. "
            "loss.flatten(1).mean(1)"
        )


REGISTRY: dict[str, type[TimestepSampler]] = {}


def register(cls: type[TimestepSampler]) -> type[TimestepSampler]:
    """Class decorator: make a sampler buildable by its ``name``."""
    REGISTRY[cls.name] = cls
    return cls


def parameters(name: str) -> list[str]:
    """The parameters a registered sampler accepts (besides the process)."""
    sig = inspect.signature(REGISTRY[name].__init__)
    return [p for p in sig.parameters if p not in ("self", "process")]


def build_spec(param: str, spec, process, exclude: tuple[str, ...] = (), **fixed) -> TimestepSampler:
    """A sampler from a parameter ``param`` that names one: a registered name, or a mapping ``{"name": ...,
    **parameters}`` (e.g. DDC's ``joint``); ``fixed`` (such as ``total_steps``) is passed to it as well. Every
    error is a ``ValueError`` naming ``param``."""
    if isinstance(spec, str):
        name, params = spec, {}
    elif isinstance(spec, dict) and isinstance(spec.get("name"), str):
        name, params = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    else:
        raise ValueError(
            f"sampler parameter {param}={spec!r} is invalid; allowed: a registered sampler name or a mapping "
            "with 'name' and that sampler's parameters"
        )
    allowed = [n for n in sorted(REGISTRY) if n not in exclude]
    if name not in allowed:
        what = "is not allowed here" if name in REGISTRY else "is not a registered sampler"
        raise ValueError(
            f"sampler parameter {param}={name!r} {what}{suggest(name, allowed)}; allowed: {', '.join(allowed)}"
        )
    try:
        return build(name, process, **fixed, **params)
    except ValueError as e:
        raise ValueError(f"sampler parameter {param}: {e}") from None


#: parameters every sampler takes that the config does not set (the trainer passes them), left out of the
#: "allowed:" list of an unknown-parameter error
UNLISTED = ("total_steps",)


def build(name: str, process, **params) -> TimestepSampler:
    """Build a registered sampler: ``build("ddc", process, total_steps=100_000, clusters=20)``.

    Raises ``ValueError`` for an unknown name or parameter (naming it, listing what is allowed — without
    ``total_steps``, which the trainer sets from ``steps`` — and suggesting the nearest) and for an invalid
    value (from the sampler's own checks).
    """
    if name not in REGISTRY:
        raise ValueError(unknown("sampler.name", name, sorted(REGISTRY)))
    check_params(  # total_steps is the trainer's (planned over `steps`), so an error does not offer it
        "sampler",
        f"the {name!r} sampler",
        REGISTRY[name].__init__,
        params,
        ("self", "process"),
        unlisted=UNLISTED,
    )
    return REGISTRY[name](process, **params)
