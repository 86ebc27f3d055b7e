"""Denoising networks, by name: ``mlp`` (points), ``unet`` (ADM-style U-Net) and ``dit`` (Diffusion
Transformer).

Every model has ``forward(x, t) -> Tensor`` shaped like ``x``, where ``x`` is a batch of samples of the
``data_shape`` it was built for and ``t`` [B] is the float time the process hands the network: a timestep
index 0..T-1 for discrete processes, or EDM's c_noise = ln(σ)/4. A model built with ``num_classes`` is
class-conditional: ``forward(x, t, y)`` with labels ``y`` [B] in ``0 .. num_classes − 1``, and ``num_classes``
(or ``y=None``) the null class that label dropout trains (:attr:`null_class`).

    model = models.build("unet", (1, 8, 8), channels=32, channel_mult=[1, 2], attention_resolutions=[4])
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from ..errors import check_params
from .dit import DiT
from .mlp import MLP
from .unet import UNet

__all__ = ["MODELS", "MLP", "UNet", "DiT", "build", "defaults", "count_parameters"]

MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "unet": UNet, "dit": DiT}


def _model_class(name: str) -> type[nn.Module]:
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"model.name={name!r} is not known; allowed: {', '.join(MODELS)}")
    return MODELS[name]


def defaults(name: str) -> dict[str, Any]:
    """The parameters of model ``name`` and their default values (everything ``build`` accepts)."""
    signature = inspect.signature(_model_class(name))
    return {k: p.default for k, p in signature.parameters.items() if k != "data_shape"}


def build(name: str, data_shape: tuple[int, ...], **params: Any) -> nn.Module:
    """Build model ``name`` for samples of shape ``data_shape`` ((D,) for points, (C, H, W) for images).

    An unknown name, an unknown parameter (with the nearest known one suggested) or a bad value raises one
    ``ValueError`` that names ``model.<param>``, the value and what is allowed.
    """
    cls = _model_class(name)
    check_params("model", f"the {name!r} model", cls, params, skip=("data_shape",))
    return cls(data_shape, **params)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())
