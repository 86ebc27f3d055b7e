"""Where a noise level sits in its process's range, as a number in [0, 1) and as one of n equal buckets.

One definition for every place that bins or plots noise levels (the drawn-noise histogram of a run, the per-bucket
difficulty analysis), so their buckets are the same buckets:

* discrete process: position ``t / T`` — bucket ``⌊t·n / T⌋`` in integer arithmetic, so a bucket boundary that
  falls on an integer t is exact (``t/T·n`` in floating point can land just below it);
* EDM process: the position of ln σ between ln σ_min and ln σ_max (the range the sampler generates over),
  computed in float64; σ outside that range gives a position outside [0, 1) and the first or last bucket;
* flow process: t itself (the unshifted time in (0, 1) a draw carries), bucket ⌊t·n⌋.

(Strategies that shape a density over the noise levels, such as CLTS, use their own coordinate: for an EDM
process the quantile of the training log-normal, which is not this range position.)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .process import kind_of

__all__ = ["bucket", "bucket_edges", "inside", "levels", "position", "stratified"]


def _log_sigma_range(process) -> tuple[float, float]:
    return math.log(process.sigma_min), math.log(process.sigma_max)


def position(process, t: Tensor) -> Tensor:
    """The position in [0, 1) of each noise level ``t`` (Long timesteps, σ for an EDM process, t for a flow
    process), float64."""
    kind = kind_of(process)
    if kind == "discrete":
        return t.double() / process.T
    if kind == "flow":
        return t.double()
    lo, hi = _log_sigma_range(process)
    return (t.double().log() - lo) / (hi - lo)


def bucket(process, t: Tensor, n: int) -> Tensor:
    """The index in [0, n) of the equal-width bucket holding each noise level ``t`` (a Long tensor)."""
    if kind_of(process) == "discrete":
        return (t.long() * n // process.T).clamp(0, n - 1)
    return (position(process, t) * n).long().clamp(0, n - 1)


def bucket_edges(process, n: int) -> tuple[list[float], str]:
    """The ``n + 1`` edges of the :func:`bucket` buckets in the process's own unit, and that unit's name:
    ``t`` (edges ``i·T/n``) for a discrete process, ``ln sigma`` for an EDM process, ``t`` (edges ``i/n``) for a
    flow process."""
    kind = kind_of(process)
    if kind == "discrete":
        return [i * process.T / n for i in range(n + 1)], "t"
    if kind == "flow":
        return [i / n for i in range(n + 1)], "t"
    lo, hi = _log_sigma_range(process)
    return [lo + (hi - lo) * i / n for i in range(n + 1)], "ln sigma"


def levels(process, values: list[float]) -> Tensor:
    """The noise levels at ``values`` given in :func:`bucket_edges`'s unit (e.g. the buckets' centres): Long
    timesteps ⌊value⌋ (discrete), σ = e^value (EDM), or t itself (flow, float32)."""
    kind = kind_of(process)
    if kind == "discrete":
        return torch.tensor([int(v) for v in values], dtype=torch.long)
    x = torch.tensor(values, dtype=torch.float64)
    return (x if kind == "flow" else x.exp()).float()


def inside(process, k: Tensor, u: Tensor, n: int) -> Tensor:
    """The noise level at fraction ``u`` ∈ [0, 1) (float64) of bucket ``k`` (Long) of ``n`` :func:`bucket`
    buckets: discrete process, the ⌊u·count⌋-th of the bucket's integers ⌈kT/n⌉ … ⌈(k+1)T/n⌉ − 1 (Long); EDM,
    σ = exp(ln σ_min + (k + u)/n·(ln σ_max − ln σ_min)); flow, t = (k + u)/n (float32 for both)."""
    kind = kind_of(process)
    if kind == "discrete":
        T, k = process.T, k.long()
        lo = (k * T + n - 1) // n  # ceil(kT/n) in integers
        hi = ((k + 1) * T + n - 1) // n
        return lo + (u * (hi - lo).double()).long()
    pos = (k.double() + u) / n
    if kind == "flow":
        return pos.float()
    a, b = _log_sigma_range(process)
    return (a + pos * (b - a)).exp().float()


def stratified(process, n: int, per_bucket: int) -> Tensor:
    """``per_bucket`` noise levels inside each of the ``n`` :func:`bucket` buckets, bucket by bucket (bucket k
    holds entries ``k·per_bucket … (k+1)·per_bucket − 1``), evenly spread: the j-th at the fraction
    u_j = (j + ½)/per_bucket of its bucket (:func:`inside`; a fixed grid, no randomness: a discrete bucket with
    fewer integers than ``per_bucket`` repeats some)."""
    u = ((torch.arange(per_bucket, dtype=torch.float64) + 0.5) / per_bucket).repeat(n)
    return inside(process, torch.arange(n).repeat_interleave(per_bucket), u, n)
