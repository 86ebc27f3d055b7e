"""What every noise process shares: the prediction types, the error type and the small tensor helpers."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

Prediction = Literal["eps", "v", "x0"]
PREDICTIONS = ("eps", "v", "x0")


class ProcessError(ValueError):
    """A noise process was asked for something it cannot give (bad schedule, bad parameter)."""


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ProcessError(f"prediction={prediction!r} is not known; allowed: {', '.join(PREDICTIONS)}")


def _eps_or_x0_target(x0: Tensor, noise: Tensor, prediction: str) -> Tensor:
    """The target of ε- or x0-prediction, the same for every process (a ProcessError for an unknown one)."""
    _check_prediction(prediction)
    return noise if prediction == "eps" else x0


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample vector [B] so it broadcasts over a batch shaped like ``like`` ([B, ...])."""
    return v.reshape(v.shape[0], *([1] * (like.dim() - 1))).to(like.dtype)


#: the kinds of process: a discrete VP process, EDM's σ ("continuous", the library's first continuous process), flow
KINDS = ("discrete", "continuous", "flow")


def kind_of(process) -> str:
    """A process's kind (:data:`KINDS`): its ``kind`` attribute, or for a process-like object without one
    ``continuous`` (EDM's σ) when it says ``continuous = True`` and ``discrete`` otherwise."""
    kind = getattr(process, "kind", None)
    if kind is None:
        kind = "continuous" if getattr(process, "continuous", False) else "discrete"
    return kind
