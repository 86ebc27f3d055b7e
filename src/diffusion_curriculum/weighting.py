"""Loss weightings: a per-sample factor on the loss as a function of the noise level, orthogonal to sampling.

``weighting.build(name, process, prediction, **params)`` returns a callable ``w(t) -> Tensor[B]`` (float32, on
``t``'s device). The trainer multiplies the per-sample loss by ``w(t) × draw.weight``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor

from .errors import suggest, unknown

Weighting = Callable[[Tensor], Tensor]
REGISTRY: dict[str, Callable[..., Weighting]] = {}


def register(name: str):
    def deco(fn):
        REGISTRY[name] = fn
        return fn

    return deco


@register("none")
def none(process, prediction: str) -> Weighting:
    """Weight 1 everywhere: the plain MSE on the prediction target (Ho et al. 2020, eq. 14, L_simple)."""

    def w(t: Tensor) -> Tensor:
        return torch.ones(t.shape[0], dtype=torch.float32, device=t.device)

    return w


def build(name: str, process, prediction: str = "eps", **params) -> Weighting:
    """A weighting by name; unknown names or parameters raise ``ValueError`` naming them."""
    if name not in REGISTRY:
        raise ValueError(unknown("weighting.name", name, sorted(REGISTRY)))
    fn = REGISTRY[name]
    allowed = [p for p in inspect.signature(fn).parameters if p not in ("process", "prediction")]
    for k in params:
        if k not in allowed:
            raise ValueError(
                f"weighting.{k} is not a parameter of the {name!r} weighting{suggest(k, allowed)}; "
                f"allowed: {', '.join(allowed) or 'none'}"
            )
    return fn(process, prediction, **params)
