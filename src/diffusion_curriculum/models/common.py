"""Pieces the three models share: the sinusoidal time embedding, the class embedding, and the checks that turn a bad
configuration value into one clear ``ValueError`` naming ``model.<param>``, the value and what is allowed
(one sentence: what, where, what to do).

The checks run in the model constructors, so ``MLP(...)``, ``UNet(...)`` and ``DiT(...)`` called directly
fail as clearly as ``models.build(...)`` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..checks import check_value, is_int, is_number

# ----------------------------------------------------------------------------------------------------------
# Time embedding


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of times ``t`` [B] -> [B, dim]: cos and sin at ``dim // 2`` frequencies spaced
    geometrically from 1 down to 1/max_period (Vaswani et al. 2017, §3.5, used for the diffusion time by
    Ho et al. 2020, App. B, and ADM, Dhariwal & Nichol 2021).

    Works for both time conventions the library feeds the models: at frequency 1 the (cos, sin) pair is
    one-to-one for |t| < π, which covers EDM's c_noise = ln(σ)/4 ∈ [-2, 1.2]; the slowest frequencies are
    one-to-one far beyond t = 999, which covers discrete timestep indices. Computed in float32 even under
    autocast, because bfloat16 cannot tell t = 998 from t = 999.
    """
    half = dim // 2
    exponent = torch.arange(half, device=t.device, dtype=torch.float32) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:  # odd widths get one zero feature so the output is exactly `dim` wide
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """Sinusoidal features followed by a two-layer SiLU MLP, as in ADM's ``time_embed`` and DiT's
    ``TimestepEmbedder``: the MLP lets the network pick the frequencies that matter for its time range."""

    def __init__(self, frequency_dim: int, out_dim: int):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_dim))


class ClassEmbedding(nn.Module):
    """A learned vector per class, plus one for the *null class* ``num_classes`` ("no label"), which a
    class-conditional model is trained on with label dropout so that the same network also makes the
    unconditional prediction classifier-free guidance needs (Ho & Salimans 2022, §3.2; DiT's
    ``LabelEmbedder``, Peebles & Xie 2023, §3.2 and App. A, which drops labels with probability 0.1).

    ``forward(y, x)`` gives [B, dim] for labels ``y`` [B], an integer tensor on ``x``'s device (``None``: the
    null class for the whole batch); their values are validated where labels enter, not here.
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        if y is None:
            y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],) or y.dtype.is_floating_point:
            what = (
                f"shape {tuple(y.shape)} and dtype {y.dtype}"
                if isinstance(y, torch.Tensor)
                else type(y).__name__
            )
            raise ValueError(
                f"labels are {what} but x has batch size {x.shape[0]}; give one integer label per sample as a "
                "tensor"
            )
        # the label values are not read here (a host read every forward would stall the GPU and break the
        # compiled graph): they are checked where they enter (the data, guidance.guided, `sample --labels`); an
        # index outside the table fails in the lookup itself
        return self.table(y.long())


def class_embedding(num_classes: int | None, dim: int) -> ClassEmbedding | None:
    """The :class:`ClassEmbedding` of a model built with ``num_classes`` (checked: an integer >= 1), or
    ``None`` for an unconditional one (no parameter is created, so its random initialisation is unchanged)."""
    if num_classes is None:
        return None
    return ClassEmbedding(integer("num_classes", num_classes), dim)


def add_class(
    emb: torch.Tensor, embedding: ClassEmbedding | None, y: torch.Tensor | None, x: torch.Tensor, name: str
) -> torch.Tensor:
    """The conditioning vector ``emb`` plus the class embedding of ``y`` (ADM's ``emb + label_emb(y)``,
    Dhariwal & Nichol 2021, App. A; DiT's ``c = t + y``); ``emb`` itself for an unconditional model, which
    refuses labels in one sentence."""
    if embedding is None:
        if y is not None:
            raise ValueError(
                f"model '{name}' is unconditional but was given labels; build it with num_classes "
                "(cond.enabled=true) to condition it on classes"
            )
        return emb
    return emb + embedding(y, x).to(emb.dtype)


def batch_time(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """``t`` as a float32 tensor of shape [B] on ``x``'s device; a single value is broadcast to the batch."""
    t = torch.as_tensor(t, device=x.device)
    if t.numel() == 1:
        return t.reshape(1).expand(x.shape[0]).float()
    if t.shape != (x.shape[0],):
        raise ValueError(
            f"t has shape {tuple(t.shape)} but x has batch size {x.shape[0]}; "
            f"t must have shape [{x.shape[0]}]"
        )
    return t.float()


def check_input(x: torch.Tensor, data_shape: tuple[int, ...], name: str) -> None:
    """Fail clearly when ``x`` is not a batch of samples of the shape the model was built for."""
    if tuple(x.shape[1:]) != data_shape:
        raise ValueError(
            f"model '{name}' was built for samples of shape {data_shape} "
            f"but got x of shape {tuple(x.shape)}; "
            f"expected [batch, {', '.join(map(str, data_shape))}]"
        )


# ----------------------------------------------------------------------------------------------------------
# Checks for configuration values. Bools are rejected where integers are expected (True is an int in Python,
# but `channels: true` in a YAML file is a mistake, not 1 channel).


def _is_int(value: Any) -> bool:
    return is_int(value, exact=False)  # NumPy integers are fine where an int is expected


def integer(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, else ValueError naming ``model.<name>``."""
    check_value(f"model.{name}", value, _is_int(value) and value >= minimum, f"an integer >= {minimum}")
    return int(value)


def real(name: str, value: Any, low: float, high: float | None = None, *, low_open: bool = False) -> float:
    """``value`` as a finite float in [low, high) (or (low, high) with ``low_open``), else ValueError."""
    ok = is_number(value, exact=False)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value < high)
    bounds = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'})"
    check_value(f"model.{name}", value, ok, f"a number in {bounds}")
    return float(value)


def integers(name: str, value: Any, minimum: int = 1, allow_empty: bool = False) -> tuple[int, ...]:
    """``value`` (a list or tuple) as a tuple of ints >= ``minimum``, else ValueError."""
    ok = isinstance(value, (list, tuple)) and (allow_empty or len(value) > 0)
    ok = ok and all(_is_int(v) and v >= minimum for v in value)
    what = "a list" if allow_empty else "a non-empty list"
    check_value(f"model.{name}", value, ok, f"{what} of integers >= {minimum}")
    return tuple(int(v) for v in value)


def data_shape_of(model: str, data_shape: Any, ndim: int) -> tuple[int, ...]:
    """Check that ``data_shape`` is the shape of one sample with ``ndim`` dimensions for model ``model``:
    ``(D,)`` for the point model, ``(C, H, W)`` for the image models."""
    if not isinstance(data_shape, (list, tuple)) or not all(_is_int(d) and d >= 1 for d in data_shape):
        raise ValueError(
            f"data_shape={data_shape!r} is not allowed; it must be a tuple of positive integers, "
            "(D,) for points or (C, H, W) for images"
        )
    data_shape = tuple(int(d) for d in data_shape)
    if len(data_shape) != ndim:
        if ndim == 1:
            raise ValueError(
                f"model.name='{model}' is for points of shape (D,), but data_shape={data_shape}; "
                "use model.name='unet' or 'dit' for images"
            )
        raise ValueError(
            f"model.name='{model}' is for images of shape (C, H, W), but data_shape={data_shape}; "
            "use model.name='mlp' for points"
        )
    return data_shape


def zero_(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def divisors(n: int) -> list[int]:
    """The positive divisors of ``n``, ascending (for error messages that say what is allowed)."""
    return [d for d in range(1, n + 1) if n % d == 0]


def join(values: Sequence[Any]) -> str:
    """``values`` as one comma-separated string (for error messages)."""
    return ", ".join(str(v) for v in values)
