"""The toy 2-D point sets (swissroll, 8gaussians, checkerboard), drawn deterministically from a seed."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .dataset import DataError, Dataset
from .registry import DatasetSpec, register

__all__ = ["TOY_DATASETS", "toy_points"]

#: Points a toy set holds when the config gives no ``dataset.n``.
DEFAULT_N = 10_000


def _swissroll(n: int, g: torch.Generator) -> tuple[Tensor, Tensor | None]:
    theta = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, dtype=torch.float64))
    x = torch.stack([theta * torch.cos(theta), theta * torch.sin(theta)], 1) / 7.0
    return x + 0.05 * torch.randn(n, 2, generator=g, dtype=torch.float64), None


def _eight_gaussians(n: int, g: torch.Generator) -> tuple[Tensor, Tensor | None]:
    labels = torch.randint(0, 8, (n,), generator=g)
    angle = labels.double() * (math.pi / 4)
    centers = math.sqrt(2.0) * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    return centers + 0.1 * torch.randn(n, 2, generator=g, dtype=torch.float64), labels


def _checkerboard(n: int, g: torch.Generator) -> tuple[Tensor, Tensor | None]:
    i = torch.randint(0, 4, (n,), generator=g)
    j = 2 * torch.randint(0, 2, (n,), generator=g) + (i % 2)  # i + j even
    u = torch.rand(n, 2, generator=g, dtype=torch.float64)
    return torch.stack([i.double(), j.double()], 1) - 2.0 + u, None


_DRAW = {"swissroll": _swissroll, "8gaussians": _eight_gaussians, "checkerboard": _checkerboard}
TOY_DATASETS = tuple(_DRAW)


def toy_points(name: str, n: int, seed: int = 0) -> tuple[Tensor, Tensor | None]:
    """``n`` deterministic 2-D points of a toy set, drawn from a ``torch.Generator`` seeded with ``seed``.

    * ``swissroll``: θ = 1.5π(1 + 2u), u ~ U(0, 1); x = (θ cos θ, θ sin θ) / 7 + 0.05·N(0, I). Dividing by
      7 gives a per-axis std of about 1; all points lie within about [-2.2, 2.2].
    * ``8gaussians``: eight components N(μ_k, 0.1² I) with μ_k = √2 (cos kπ/4, sin kπ/4); per-axis std
      about 1, all points within about [-1.9, 1.9]. The label is the component k.
    * ``checkerboard``: uniform on the eight "black" unit squares of a 4x4 board covering [-2, 2]²
      (square (i, j) with i + j even); per-axis std about 1.15.
    """
    if name not in _DRAW:
        raise DataError(f"{name!r} is not a toy dataset; allowed: {', '.join(TOY_DATASETS)}")
    x, labels = _DRAW[name](n, torch.Generator().manual_seed(int(seed)))
    return x.float().contiguous(), labels


def _loader(name: str):
    def load_toy(path, n, seed) -> Dataset:
        data, labels = toy_points(name, DEFAULT_N if n is None else n, seed)
        return Dataset(data=data, labels=labels, name=name, kind="points")

    return load_toy


for _name in TOY_DATASETS:
    register(DatasetSpec(_name, _loader(_name), synthetic=True))
