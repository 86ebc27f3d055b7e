"""The per-sample denoising loss: noise a clean batch, run the network, compare with the training target.

    x_t = process.add_noise(x0, ε, t);  out = net(*process.model_input(x_t, t))
    per_sample = mean over a sample's elements of (out − process.target(x0, ε, t, prediction))²

and the training objective ``mean(weighting(t) · draw weight · per_sample)`` (the library's data path: the loss
weights of :mod:`weighting` times the importance weights a sampler returns with its draw). The trainer's step,
its evaluation loss and the analyses all compute the loss here, so they agree on what "the loss" is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn


@dataclass
class DenoisingLoss:
    """The denoising loss of one process and prediction type, with an optional loss weighting.

    ``process``: a :class:`~diffusion_curriculum.process.DiscreteProcess` or ``EDMProcess``; ``prediction``:
    ``"eps"``, ``"v"`` or ``"x0"``; ``weight_fn``: ``t ↦`` per-sample loss weight (``weighting.build``), or
    ``None`` for weight 1.
    """

    process: Any
    prediction: str = "eps"
    weight_fn: Callable[[Tensor], Tensor] | None = None

    def error(
        self,
        net: nn.Module,
        x0: Tensor,
        noise: Tensor,
        t: Tensor,
        *,
        reduce: Literal["per_sample", "mean", "none"] = "per_sample",
        autocast: contextlib.AbstractContextManager | None = None,
        labels: Tensor | None = None,
    ) -> Tensor:
        """The squared error (in float32) of ``net`` at noise levels ``t`` with noise ``noise``: each sample's
        mean, shape [B] (``reduce="per_sample"``: what ``sampler.observe`` is given), the mean over every
        element (``"mean"``) or element-wise, shaped like ``x0`` (``"none"``). ``autocast``: a context the
        forward pass runs in (e.g. ``torch.autocast``). ``labels``: the class labels a class-conditional ``net``
        is called with (``net(x, t, labels)``); ``None`` calls ``net(x, t)``."""
        out, _, target = self.forward(net, x0, noise, t, autocast=autocast, labels=labels)
        err = (out.float() - target).pow(2)
        if reduce == "per_sample":
            return err.flatten(1).mean(1)
        if reduce == "mean":
            return err.mean()
        if reduce == "none":
            return err
        raise ValueError(f"reduce={reduce!r} is not known; allowed: per_sample, mean, none")

    def forward(
        self,
        net: nn.Module,
        x0: Tensor,
        noise: Tensor,
        t: Tensor,
        *,
        autocast: contextlib.AbstractContextManager | None = None,
        labels: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(out, x_t, target)``: the network's output at x_t = ``process.add_noise(x0, noise, t)``, that x_t,
        and the training target of :attr:`prediction` (arguments as for :meth:`error`)."""
        x_t = self.process.add_noise(x0, noise, t)
        x_in, t_in = self.process.model_input(x_t, t)
        with autocast if autocast is not None else contextlib.nullcontext():
            out = net(x_in, t_in) if labels is None else net(x_in, t_in, labels)
        return out, x_t, self.process.target(x0, noise, t, self.prediction, x_t)

    def objective(self, t: Tensor, per_sample: Tensor, draw_weight: Tensor) -> Tensor:
        """The scalar training loss ``mean(weighting(t) · draw_weight · per_sample)`` (the weighting's factor is 1
        without a ``weight_fn``); a :class:`~diffusion_curriculum.weighting.Weighting` gives it through its
        ``weighted`` (for a learned weighting such as ``edm2-uncertainty``, its own form)."""
        if self.weight_fn is None:
            return (draw_weight * per_sample).mean()
        weighted = getattr(self.weight_fn, "weighted", None)
        if weighted is not None:
            return weighted(t, per_sample, draw_weight).mean()
        return (self.weight_fn(t) * draw_weight * per_sample).mean()
