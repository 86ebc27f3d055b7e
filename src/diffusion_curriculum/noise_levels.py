"""Where a noise level sits in its process's range, as a number in [0, 1) and as one of n equal buckets.

One definition for every place that bins or plots noise levels (the drawn-noise histogram of a run, the per-bucket
difficulty analysis), so their buckets are the same buckets:

* discrete process: position ``t / T`` — bucket ``⌊t·n / T⌋`` in integer arithmetic, so a bucket boundary that
  falls on an integer t is exact (``t/T·n`` in floating point can land just below it);
* EDM process: the position of ln σ between ln σ_min and ln σ_max (the range the sampler generates over),
  computed in float64; σ outside that range gives a position outside [0, 1) and the first or last bucket.

(Strategies that shape a density over the noise levels, such as CLTS, use their own coordinate: for an EDM
process the quantile of the training log-normal, which is not this range position.)
"""

from __future__ import annotations

import math

from torch import Tensor

__all__ = ["bucket", "bucket_edges", "position"]


def _log_sigma_range(process) -> tuple[float, float]:
    return math.log(process.sigma_min), math.log(process.sigma_max)


def position(process, t: Tensor) -> Tensor:
    """The position in [0, 1) of each noise level ``t`` (Long timesteps, or σ for an EDM process), float64."""
    if not process.continuous:
        return t.double() / process.T
    lo, hi = _log_sigma_range(process)
    return (t.double().log() - lo) / (hi - lo)


def bucket(process, t: Tensor, n: int) -> Tensor:
    """The index in [0, n) of the equal-width bucket holding each noise level ``t`` (a Long tensor)."""
    if not process.continuous:
        return (t.long() * n // process.T).clamp(0, n - 1)
    return (position(process, t) * n).long().clamp(0, n - 1)


def bucket_edges(process, n: int) -> tuple[list[float], str]:
    """The ``n + 1`` edges of the :func:`bucket` buckets in the process's own unit, and that unit's name:
    ``t`` (edges ``i·T/n``) for a discrete process, ``ln sigma`` for an EDM process."""
    if not process.continuous:
        return [i * process.T / n for i in range(n + 1)], "t"
    lo, hi = _log_sigma_range(process)
    return [lo + (hi - lo) * i / n for i in range(n + 1)], "ln sigma"
