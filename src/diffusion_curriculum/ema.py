"""An exponential moving average of a model's weights, as a resumable object.

The decay warms up: decay_s = min(decay, (1 + s)/(warmup + s)) at update s (the ``num_updates`` of
TensorFlow's ``ExponentialMovingAverage``, as used by Tarvainen & Valpola 2017), so the first averages are
not dominated by the initial weights.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """An averaged copy (:attr:`model`, frozen, in eval mode) of ``model``'s parameters; buffers are copied as
    they are (batch-norm statistics, say, are not averaged)."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: float = 10):
        self.decay, self.warmup = decay, warmup
        #: the averaged model: use it for evaluation and generation
        self.model = copy.deepcopy(model).requires_grad_(False).eval()
        # listed once, not per update: the update is one fused call over these lists
        self._ema_params = list(self.model.parameters())
        self._params = list(model.parameters())
        self._buffer_pairs = list(zip(self.model.buffers(), model.buffers()))

    def decay_at(self, step: int) -> float:
        """The decay of update number ``step`` (0-based): min(decay, (1 + step)/(warmup + step))."""
        return min(self.decay, (1 + step) / (self.warmup + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move the average towards the model's current weights with :meth:`decay_at` ``(step)``."""
        torch._foreach_lerp_(self._ema_params, self._params, 1.0 - self.decay_at(step))
        for b_ema, b in self._buffer_pairs:
            b_ema.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        """The averaged model's ``state_dict``."""
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the averaged model's weights from a :meth:`state_dict`."""
        self.model.load_state_dict(state)
