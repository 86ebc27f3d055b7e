"""The in-memory :class:`Dataset` every loader returns, and :class:`DataError`, the one error data problems raise."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

__all__ = ["KIND_RANGES", "DataError", "Dataset"]

#: The value range each kind of data has unless its loader declares another: images are scaled into [-1, 1];
#: points keep whatever coordinates they have (``None``: unbounded).
KIND_RANGES: dict[str, tuple[float, float] | None] = {"image": (-1.0, 1.0), "points": None}


class DataError(ValueError):
    """A dataset could not be loaded or used; the message says what, where, and what to do."""


@dataclass
class Dataset:
    """An in-memory dataset.

    ``data`` is float32: images ``[N, C, H, W]`` in [-1, 1] (``kind="image"``) or points ``[N, D]``
    (``kind="points"``). ``labels`` is a ``Long`` tensor ``[N]`` or ``None``; ``classes`` names the labels
    where they come from folder names.

    ``value_range`` is the (low, high) every value lies in, or ``None`` when the data has no fixed bounds; the
    default (``"kind"``) takes it from :data:`KIND_RANGES`: (-1, 1) for images, ``None`` for points. Generation
    clips its clean-sample estimates to it (``eval.clip: auto``). ``note`` is a line the trainer shows when the
    run starts, saying what the loader chose for the user (e.g. grayscale detected), or ``None``.
    """

    data: Tensor
    labels: Tensor | None
    name: str
    kind: str
    classes: tuple[str, ...] | None = None
    value_range: tuple[float, float] | None | str = "kind"
    note: str | None = None

    def __post_init__(self) -> None:
        if self.value_range == "kind":
            self.value_range = KIND_RANGES.get(self.kind)
        if self.value_range is not None:
            lo, hi = (float(v) for v in self.value_range)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(
                    f"value_range={self.value_range!r} is not a range; give (low, high) with low < high, or None"
                )
            self.value_range = (lo, hi)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample, e.g. ``(1, 8, 8)`` or ``(2,)``."""
        return tuple(self.data.shape[1:])

    def __len__(self) -> int:
        return int(self.data.shape[0])
