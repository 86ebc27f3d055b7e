"""Optimizer schedules: MDLRC, momentum decay with learning-rate compensation.

Xu et al. 2024, "Towards Faster Training of Diffusion Models: An Inspiration of A Consistency Phenomenon"
(arXiv 2404.07946); docs/methods.md, "MDLRC". **[reconstruction]**: the paper's exact schedule was not available;
the formulas below are the project's documented choice and every constant is a parameter.

    β1(s) = β1_start + (β1_end − β1_start) · shape(clip((s − s_start)/(s_end − s_start), 0, 1))
    lr(s) = lr_base(s) · c(β1(s))

with shape ``linear`` (x) or ``cosine`` ((1 − cos πx)/2) and compensation c(β) — or ``shape="demon"``, the rule of
Chen et al., "Demon: Improved Neural Network Training with Momentum Decay" (eq. 2 there), which the one public
transcription citing arXiv 2404.07946 uses: with x the same progress and β0 = β1_start,

    β1(x) = max(β1_end, β0·(1 − x) / ((1 − β0) + β0·(1 − x)))

reaching 0 at the end of the decay unless the floor β1_end (default 0 for this shape) stops it earlier; its
default compensation is ``linear``, the pairing of that transcription. Compensation options:

* ``none``   → 1;
* ``noise``  → √[(1 − β1_start)(1 + β)] / √[(1 + β1_start)(1 − β)] (default). Under white gradient noise of
  variance σ², Adam's first moment m = (1 − β)Σ βᵏ g has variance σ²(1 − β)/(1 + β); this factor keeps the
  standard deviation of the update what it was at β1_start;
* ``linear`` → (1 − β1_start)/(1 − β).

Use::

    momentum = optim.MomentumDecay(optimizer, total_steps=100_000)
    for batch in data:
        loss.backward(); optimizer.step(); scheduler.step()   # any *chainable* LR scheduler, or none
        momentum.step()                                          # after optimizer.step() (and the scheduler)

β2 is never touched.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .checks import check_params, checker, is_int, is_number, unknown

SHAPES = ("linear", "cosine", "demon")
#: (beta1_end, compensation) when not given: demon decays to 0 with linear compensation, the others to 0.5 with noise
SHAPE_DEFAULTS = {"linear": (0.5, "noise"), "cosine": (0.5, "noise"), "demon": (0.0, "linear")}
COMPENSATIONS = ("none", "noise", "linear")


_check = checker("momentum.")


def _choice(name: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(unknown(f"momentum.{name}", value, allowed))


def _resolve_step(name: str, value, total_steps: int) -> int:
    """An int is a step count; a float in [0, 1] a fraction of ``total_steps`` (rounded to the nearest step)."""
    if is_int(value):
        _check(name, value, value >= 0, "an integer step count >= 0, or a fraction of total_steps in [0, 1]")
        return int(value)
    _check(
        name,
        value,
        is_number(value) and 0.0 <= value <= 1.0,
        "an integer step count >= 0, or a float fraction of total_steps in [0, 1]",
    )
    return int(round(float(value) * total_steps))


class MomentumDecay:
    """MDLRC (Xu et al. 2024, arXiv 2404.07946; docs/methods.md, "MDLRC") [reconstruction]: decays Adam's β1 from
    ``beta1_start`` to ``beta1_end`` between steps ``start`` and ``end`` and scales the learning rate by the
    compensation factor c(β1(s)).

    Parameters
    ----------
    optimizer:
        any torch optimizer whose param groups carry ``betas`` (Adam, AdamW, NAdam, RAdam, … including their
        ``foreach``/``fused`` forms; tensor betas, as used with ``capturable=True``, are updated in place).
    total_steps:
        the planned number of optimizer steps (the default ``end``, and the unit of fractional start/end).
    beta1_start, beta1_end:
        β1 at the start and at the end of the decay, each in [0, 1) (defaults 0.9 → 0.5, [reconstruction]); for
        ``shape="demon"`` ``beta1_end`` is a floor (default 0) and must not exceed ``beta1_start``.
    start, end:
        where the decay runs. An ``int`` is a step count; a ``float`` in [0, 1] is a fraction of
        ``total_steps`` (so ``end=1.0`` is ``total_steps`` but ``end=1`` is step 1). ``end=None`` →
        ``total_steps``. Needs end > start. Before ``start`` β1 = ``beta1_start``; after ``end`` β1 = ``beta1_end``.
    shape:
        ``"linear"``, ``"cosine"`` ((1 − cos πx)/2: slow, fast, slow) or ``"demon"`` (see the module docstring).
    compensation:
        ``"noise"`` (the default for linear/cosine), ``"linear"`` (the default for demon) or ``"none"``.

    On construction every group's β1 is set to β1(0) (β2 kept) and its lr multiplied by c(β1(0)) (which is 1,
    since β1(0) = β1_start). Each :meth:`step` sets β1(s) and multiplies each group's *current* lr by
    c(β1(s))/c(β1(s−1)). It therefore composes with an LR scheduler stepped before it, provided that scheduler
    is *chainable* — it updates the lr multiplicatively from its current value: ``StepLR``, ``MultiStepLR``,
    ``ExponentialLR``, ``LinearLR``, ``PolynomialLR``, ``MultiplicativeLR``, ``CosineAnnealingLR`` (recursive
    form, exact with ``eta_min=0`` — a non-zero floor is added, not multiplied), the trainer's ``LRSchedule``.
    Not ``LambdaLR``, ``OneCycleLR`` or ``CyclicLR``, which recompute the lr from ``base_lrs`` (or fixed
    bounds) each step and would erase the compensation; nor ``scheduler.step(epoch)`` (closed form).

    Adam's bias correction 1 − β1ᵗ uses the *current* β1 (torch reads ``betas`` each step); once t is in the
    hundreds this correction is 1 to many digits, so changing β1 mid-run is harmless.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        beta1_start: float = 0.9,
        beta1_end: float | None = None,
        start: int | float = 0,
        end: int | float | None = None,
        shape: str = "linear",
        compensation: str | None = None,
    ):
        groups = getattr(optimizer, "param_groups", None)
        if not groups or not all("betas" in g for g in groups):
            raise ValueError(
                f"{type(optimizer).__name__} has no betas in its param groups: "
                "MomentumDecay needs an optimizer with betas (Adam, AdamW)"
            )
        for g in groups:
            b = g["betas"]
            if not isinstance(b, (tuple, list)) or len(b) != 2:
                raise ValueError(
                    f"{type(optimizer).__name__} has betas={b!r}, not a pair (β1, β2): "
                    "MomentumDecay needs an optimizer with betas (Adam, AdamW)"
                )
        _check("total_steps", total_steps, is_int(total_steps) and total_steps >= 1, "an integer >= 1")
        _choice("shape", shape, SHAPES)
        beta1_end = SHAPE_DEFAULTS[shape][0] if beta1_end is None else beta1_end
        compensation = SHAPE_DEFAULTS[shape][1] if compensation is None else compensation
        for name, v in (("beta1_start", beta1_start), ("beta1_end", beta1_end)):
            _check(name, v, is_number(v) and 0.0 <= v < 1.0, "a number in [0, 1)")
        if shape == "demon":
            _check(
                "beta1_end",
                beta1_end,
                beta1_end <= beta1_start,
                f"a floor <= beta1_start={beta1_start!r} with shape='demon'",
            )
        _choice("compensation", compensation, COMPENSATIONS)
        s_start = _resolve_step("start", start, total_steps)
        s_end = total_steps if end is None else _resolve_step("end", end, total_steps)
        if s_end <= s_start:
            raise ValueError(
                f"momentum.end={end!r} (step {s_end}) must come after momentum.start={start!r} (step {s_start})"
            )

        self.optimizer = optimizer
        self.total_steps = int(total_steps)
        self.beta1_start, self.beta1_end = float(beta1_start), float(beta1_end)
        self.start, self.end = s_start, s_end
        self.shape, self.compensation = shape, compensation
        self._step = 0
        self._factor = 1.0  # the compensation currently multiplied into every group's lr
        self._apply(0)

    # -- the schedule -------------------------------------------------------------------------------------
    def beta1(self, step: int | None = None) -> float:
        """β1 at ``step`` (default: the current step)."""
        s = self._step if step is None else step
        x = min(1.0, max(0.0, (s - self.start) / (self.end - self.start)))
        if self.shape == "demon":
            b0, rest = self.beta1_start, 1.0 - x
            return max(self.beta1_end, b0 * rest / ((1.0 - b0) + b0 * rest))
        if self.shape == "cosine":
            x = (1.0 - math.cos(math.pi * x)) / 2.0
        return self.beta1_start + (self.beta1_end - self.beta1_start) * x

    def compensation_at(self, beta: float) -> float:
        """c(β): the learning-rate factor for momentum β (1 at β = β1_start)."""
        b0 = self.beta1_start
        if self.compensation == "noise":
            return math.sqrt((1.0 - b0) * (1.0 + beta) / ((1.0 + b0) * (1.0 - beta)))
        if self.compensation == "linear":
            return (1.0 - b0) / (1.0 - beta)
        return 1.0

    def factor(self, step: int | None = None) -> float:
        """The lr factor: without ``step``, the one currently applied to the optimizer; else c(β1(step))."""
        return self._factor if step is None else self.compensation_at(self.beta1(step))

    def _set_beta1(self, beta: float) -> None:
        """betas = (β1, β2) in every group, kept a tuple; tensor betas (capturable optimizers, CUDA graphs hold
        them) are updated in place."""
        for g in self.optimizer.param_groups:
            b1, b2 = g["betas"]
            if isinstance(b1, Tensor):
                b1.fill_(beta)
                g["betas"] = (b1, b2)
            else:
                g["betas"] = (beta, b2 if isinstance(b2, Tensor) else float(b2))

    def _apply(self, s: int) -> None:
        beta = self.beta1(s)
        new = self.compensation_at(beta)
        ratio = new / self._factor
        self._set_beta1(beta)
        for g in self.optimizer.param_groups:
            if ratio != 1.0:
                lr = g["lr"]
                if isinstance(lr, Tensor):
                    lr.mul_(ratio)
                else:
                    g["lr"] = lr * ratio
        self._factor = new

    def step(self) -> None:
        """Advance one optimizer step: set β1(s) and rescale each group's current lr by c(β1(s))/c(β1(s−1))."""
        self._step += 1
        self._apply(self._step)

    # -- state --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Plain values only (numbers, strings): the step, the lr factor in force, and the settings."""
        return {
            "step": self._step,
            "factor": self._factor,
            "beta1": self.beta1(),
            "total_steps": self.total_steps,
            "beta1_start": self.beta1_start,
            "beta1_end": self.beta1_end,
            "start": self.start,
            "end": self.end,
            "shape": self.shape,
            "compensation": self.compensation,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the step and the lr factor in force, and set β1 of every group to this schedule's β1(step).

        The compensated lr itself lives in the optimizer: load the optimizer's state dict too. The settings
        stored alongside are informative; the schedule continues with *this* object's settings (the next
        :meth:`step` rescales from the stored factor, so changed settings take effect without a jump in lr
        other than their own).
        """
        try:
            s, f = state["step"], state["factor"]
        except (KeyError, TypeError):
            raise ValueError("momentum state needs 'step' and 'factor'") from None
        if not (is_int(s) and s >= 0):
            raise ValueError(f"momentum state step={s!r} is invalid; allowed: an integer >= 0")
        if not (is_number(f) and f > 0):
            raise ValueError(f"momentum state factor={f!r} is invalid; allowed: a finite number > 0")
        self._step = int(s)
        self._factor = float(f)
        self._set_beta1(self.beta1())

    def status(self) -> dict:
        """A small dict for logs."""
        return {"beta1": self.beta1(), "lr_factor": self._factor}

    def __repr__(self) -> str:
        return (
            f"MomentumDecay(beta1 {self.beta1_start} -> {self.beta1_end}, steps {self.start}..{self.end}, "
            f"shape={self.shape!r}, compensation={self.compensation!r}, step={self._step})"
        )


def build_momentum(optimizer: torch.optim.Optimizer, total_steps: int, **params) -> MomentumDecay:
    """A :class:`MomentumDecay` from config parameters; an unknown or invalid parameter raises ``ValueError``
    naming ``momentum.<param>`` (with the nearest known name)."""
    check_params(
        "momentum",
        "the momentum schedule (besides 'enabled')",
        MomentumDecay.__init__,
        params,
        skip=("self", "optimizer"),
        section_keys=("enabled",),
    )
    return MomentumDecay(optimizer, total_steps, **params)
