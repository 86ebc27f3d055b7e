"""The noise-assignment interface and its registry."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ..checks import check_params, unknown

__all__ = ["REGISTRY", "NoiseAssigner", "build", "register"]

REGISTRY: dict[str, type[NoiseAssigner]] = {}


class NoiseAssigner:
    """Base class: subclasses implement :meth:`_draw`. An assigner keeps no state between draws: its randomness
    is the ``generator`` it is given (the trainer's noise stream, saved in every checkpoint), so a resumed run
    draws the same noise."""

    name: ClassVar[str] = "base"
    #: whether a draw reads a value back to the host (a batch assignment solved on the CPU)
    host_sync: ClassVar[bool] = False

    def __init__(self) -> None:  # no parameters (an assigner with some declares its own)
        pass

    def draw(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Noise shaped like ``x0`` (float32 unless ``x0`` is another floating dtype), on ``x0``'s device, drawn
        from ``generator`` (a generator on that device; one elsewhere is refused in one sentence) or torch's
        global generator."""
        if not x0.is_floating_point() or x0.dim() < 1 or x0.shape[0] < 1:
            raise ValueError(
                f"noise: x0 must be a non-empty floating batch [B, ...], got {tuple(x0.shape)} {x0.dtype}"
            )
        if generator is not None and generator.device.type != x0.device.type:
            raise ValueError(
                f"the {self.name!r} noise is drawn on x0's device ({x0.device}) but was given a generator on "
                f"{generator.device}; pass torch.Generator(device=x0.device) or None"
            )
        return self._draw(x0, generator)

    def _randn(self, shape, x0: Tensor, generator: torch.Generator | None) -> Tensor:
        return torch.randn(shape, generator=generator, device=x0.device, dtype=x0.dtype)

    def _draw(self, x0: Tensor, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def register(cls: type[NoiseAssigner]) -> type[NoiseAssigner]:
    """Class decorator: make an assigner buildable by its ``name``."""
    REGISTRY[cls.name] = cls
    return cls


def build(name: str = "gaussian", **params) -> NoiseAssigner:
    """Build a registered assigner: ``build("knn", k=4)``. An unknown name or parameter, or an invalid value, is
    a ``ValueError`` naming it."""
    if name not in REGISTRY:
        raise ValueError(unknown("noise.name", name, sorted(REGISTRY)))
    check_params("noise", f"the {name!r} noise", REGISTRY[name].__init__, params, ("self",))
    return REGISTRY[name](**params)
