"""The in-memory :class:`Dataset` every loader returns, and :class:`DataError`, the one error data problems raise."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["DataError", "Dataset"]


class DataError(ValueError):
    """A dataset could not be loaded or used; the message says what, where, and what to do."""


@dataclass
class Dataset:
    """An in-memory dataset.

    ``data`` is float32: images ``[N, C, H, W]`` in [-1, 1] (``kind="image"``) or points ``[N, D]``
    (``kind="points"``). ``labels`` is a ``Long`` tensor ``[N]`` or ``None``; ``classes`` names the labels
    where they come from folder names.
    """

    data: Tensor
    labels: Tensor | None
    name: str
    kind: str
    classes: tuple[str, ...] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample, e.g. ``(1, 8, 8)`` or ``(2,)``."""
        return tuple(self.data.shape[1:])

    def __len__(self) -> int:
        return int(self.data.shape[0])
