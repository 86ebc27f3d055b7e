"""The in-memory :class:`Dataset` every loader returns, and :class:`DataError`, the one error data problems raise."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
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
    (``kind="points"``). ``labels`` is a ``Long`` tensor ``[N]`` of class indices ``0 .. num_classes − 1`` or
    ``None``; ``classes`` names the labels where they come from folder names (``classes[k]`` is label ``k``).
    Labels that are not one non-negative integer per sample are a :class:`DataError` in one sentence.

    ``value_range`` is the (low, high) every value lies in, or ``None`` when the data has no fixed bounds; the
    default (``"kind"``) takes it from :data:`KIND_RANGES`: (-1, 1) for images, ``None`` for points. Generation
    clips its clean-sample estimates to it (``eval.clip: auto``). ``note`` is a line the trainer shows when the
    run starts, saying what the loader chose for the user (e.g. grayscale detected), or ``None``. ``choices``
    holds those choices as the loader's parameters (``{"channels": 1}``): a run writes them into its
    ``config.yaml`` (a resumed one too), so every later load of the run (resume, ``sample``, ``evaluate``) repeats them even when
    the loader's rule for choosing changes. ``val_data`` / ``val_labels`` are the samples held out from
    training (``dataset.val_fraction``), or ``None``.
    """

    data: Tensor
    labels: Tensor | None
    name: str
    kind: str
    classes: tuple[str, ...] | None = None
    value_range: tuple[float, float] | None | str = "kind"
    note: str | None = None
    choices: dict[str, Any] = field(default_factory=dict)
    val_data: Tensor | None = None
    val_labels: Tensor | None = None

    def __post_init__(self) -> None:
        self._check_labels()
        if self.value_range == "kind":
            self.value_range = KIND_RANGES.get(self.kind)
        if self.value_range is not None:
            lo, hi = (float(v) for v in self.value_range)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(
                    f"value_range={self.value_range!r} is not a range; give (low, high) with low < high, or None"
                )
            self.value_range = (lo, hi)

    def _check_labels(self) -> None:
        y = self.labels
        if y is None:
            return
        n = int(self.data.shape[0])
        if y.ndim != 1 or y.shape[0] != n:
            raise DataError(
                f"dataset {self.name!r} has labels of shape {tuple(y.shape)} but {n} samples; give one integer "
                "label per sample, or no labels"
            )
        if y.dtype.is_floating_point or y.dtype == torch.bool or (n and int(y.min()) < 0):
            raise DataError(
                f"dataset {self.name!r} has labels that are not class indices (dtype {y.dtype}, smallest "
                f"{y.min().item() if n else None}); give integers 0, 1, ... (one per class)"
            )
        if self.classes is not None and n and int(y.max()) >= len(self.classes):
            raise DataError(
                f"dataset {self.name!r} has label {int(y.max())} but names only {len(self.classes)} classes; "
                "give one class name per label"
            )

    @property
    def num_classes(self) -> int | None:
        """How many classes the labels index: ``len(classes)`` when they are named, else the largest label + 1;
        ``None`` without labels."""
        if self.labels is None:
            return None
        if self.classes is not None:
            return len(self.classes)
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def class_names(self) -> tuple[str, ...] | None:
        """Every class's name (``classes``, else the label as text: ``"0"``, ``"1"``, ...); ``None`` without labels."""
        k = self.num_classes
        return None if k is None else self.classes or tuple(str(i) for i in range(k))

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample, e.g. ``(1, 8, 8)`` or ``(2,)``."""
        return tuple(self.data.shape[1:])

    def __len__(self) -> int:
        return int(self.data.shape[0])
