"""Datasets: embedded ones (scikit-learn digits, mnist5k, toy 2-D sets) and the user's own (``.npz``, image folder).

Everything is loaded into memory once, as a float32 tensor: images ``[N, C, H, W]`` in [-1, 1], points
``[N, D]``. :func:`load` is the single entry point (the config's ``dataset:`` mapping is passed to it as
keyword arguments); :class:`Batcher` turns a :class:`Dataset` into deterministic, resumable minibatches, also
across ranks. Drawing (sample grids, scatter plots) lives in :mod:`diffusion_curriculum.viz`; :func:`save_grid`
and :func:`to_image_grid` are importable from here too.

A new dataset is one :func:`register` call with a :class:`DatasetSpec` (its name, loader and parameters) in a
module imported below; :func:`load`, the config check and the error messages pick it up from the registry.
Every data problem raises :class:`DataError` with one sentence: what is wrong, where, and what to do.
"""

from __future__ import annotations

# Each of these modules registers its datasets on import; the order is the order `names()` lists them in.
from . import embedded  # noqa: F401

# isort: split
from . import toy  # noqa: F401

# isort: split
from . import files  # noqa: F401

# isort: split
from ..viz import save_grid, to_image_grid
from .batcher import Batcher
from .dataset import DataError, Dataset
from .files import IMAGE_EXTENSIONS
from .registry import DatasetSpec, fresh_points, load, names, register
from .toy import TOY_DATASETS, toy_points

#: The datasets registered by the library itself (:func:`names` also lists any registered later).
DATASETS = names()

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "TOY_DATASETS",
    "Batcher",
    "DataError",
    "Dataset",
    "DatasetSpec",
    "fresh_points",
    "load",
    "names",
    "register",
    "save_grid",
    "to_image_grid",
    "toy_points",
]
