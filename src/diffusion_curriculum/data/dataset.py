"""The in-memory :class:`Dataset` every loader returns, and :class:`DataError`, the one error data problems raise."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["KIND_RANGES", "UINT8_CODEC", "DataError", "Dataset", "decode"]

#: The value range each kind of data has unless its loader declares another: images are scaled into [-1, 1];
#: points keep whatever coordinates they have (``None``: unbounded).
KIND_RANGES: dict[str, tuple[float, float] | None] = {"image": (-1.0, 1.0), "points": None}

#: the codec of 8-bit images: codes 0..255 read as ``code / 127.5 - 1`` in [-1, 1] (:func:`decode`)
UINT8_CODEC = (127.5, 1.0)


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

    Compact storage: with ``codec=(div, shift)`` the ``data`` given is uint8 codes, held as they are (a quarter
    of float32's memory), and ``data`` reads as ``codes.float() / div - shift`` (:func:`decode`: the loaders'
    own arithmetic, so the values are bit for bit those of a float32 load). Each read of ``data`` decodes the
    whole set; :meth:`rows` decodes only the rows asked for, :attr:`raw` is what is held, and the
    :class:`~diffusion_curriculum.data.Batcher` keeps the codes (on the device too) and decodes each batch there.
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
    codec: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.codec is not None and self.raw.is_floating_point():
            # already decoded: ``dataclasses.replace(ds, labels=...)`` hands over ``ds.data``; the values are
            # right, only the compactness is lost (pass ``data=ds.raw`` to keep it)
            self.codec = None
        if self.codec is not None and self.raw.dtype != torch.uint8:
            raise DataError(
                f"dataset {self.name!r} has codec={self.codec!r} but its data is {self.raw.dtype}; a codec "
                "decodes uint8 codes 0..255"
            )
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
        n = len(self)
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
        return tuple(self.raw.shape[1:])

    def __len__(self) -> int:
        return int(self.raw.shape[0])

    @property
    def raw(self) -> Tensor:
        """The tensor held: the uint8 codes of a compact dataset (``codec`` set), else ``data`` itself."""
        return self.__dict__["_raw"]

    def rows(self, index: Tensor | slice) -> Tensor:
        """``data[index]``, decoding only those rows of a compact dataset."""
        return decode(self.raw[index], self.codec)


def decode(codes: Tensor, codec: tuple[float, float] | None) -> Tensor:
    """float32 values of uint8 ``codes`` under ``codec=(div, shift)``: ``codes.float() / div - shift``, in that
    order (what the loaders compute, so a compact dataset reads bit for bit as a float32 one); ``codes`` as they
    are when ``codec`` is ``None``. Runs wherever ``codes`` are (the batcher's: on the device)."""
    return codes if codec is None else codes.float() / codec[0] - codec[1]


def _read_data(self: Dataset) -> Tensor:
    return decode(self.raw, self.codec)


def _write_data(self: Dataset, value: Tensor) -> None:
    self.__dict__["_raw"] = value


#: ``data`` is a property over what is held (the dataclass's ``__init__`` and ``dataclasses.replace`` go through
#: it); set after the class is made, so the dataclass still sees ``data`` as a field without a default
Dataset.data = property(  # type: ignore[assignment]
    _read_data, _write_data, doc="float32 samples (decoded from the codes of a compact dataset on each read)"
)
