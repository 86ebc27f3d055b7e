"""Learning-progress timestep sampling: train where the loss is falling.

This library's own strategy (docs/methods.md, "Learning progress"), in the spirit of teacher–student
curricula (Matiisen et al. 2017, "Teacher–Student Curriculum Learning", arXiv 1707.00183: sample the task whose
score changes fastest) and of Kim et al., CVPR 2025, "Adaptive Non-Uniform Timestep Sampling for Diffusion Model
Training" (learn where to sample from how much each timestep reduces the loss). Every fixed density or loss-level
rule trains a noise level whether or not training there still pays off; this one moves the draws to the noise
levels whose loss is still dropping, and away from those that have converged.

The noise levels are cut into K buckets; each bucket keeps a fast and a slow exponential moving average of its
observed mean loss; its progress is the drop of the fast average below the slow one, in loss units (the
default) or as a fraction of the slow average,

    progress_k = max(0, slow_k − fast_k)   or   progress_k = max(0, (slow_k − fast_k) / slow_k),

and buckets are drawn with p_k ∝ (1 − ε)·progress_k^{1/temperature} / Σ_j progress_j^{1/temperature} + ε/K
(uniform when no bucket progresses), the noise level uniform inside the bucket. All constants are the project's
documented choices, chosen by benchmark [reconstruction: no paper defines this sampler].
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .. import noise_levels
from ..device import to_device
from . import clusters as _clusters
from .base import TimestepSampler, check_choice, check_param, is_int, is_number, register
from .observations import bucket_sums, moving_average

PROGRESS = ("relative", "absolute")
_U_EPS = 2.0**-60


@register
class LearningProgress(TimestepSampler):
    """p(bucket) ∝ how fast the bucket's loss is falling (see the module docstring for the formula).

    Parameters
    ----------
    buckets:
        K, the number of buckets (default 20): equal runs of t for a discrete process (as DDC's uniform
        clusters), equal-probability quantiles of the training log-normal of ln σ for an EDM process, equal
        widths of t for a flow process (t uniform inside a bucket; t ~ U(0, 1) until every bucket is seen).
    fast_rate, slow_rate:
        the moving averages' rates per observation of the bucket, fast = fast + rate·(m − fast) (defaults 0.1 and
        0.01: memories of about 10 and 100 observations); fast_rate > slow_rate.
    epsilon:
        the uniform share ε ∈ [0, 1] mixed in so every level keeps training (default 0.2).
    temperature:
        progress is raised to 1/temperature before normalising (default 1; < 1 sharpens, > 1 flattens).
    progress:
        ``"absolute"`` (slow − fast: larger where the loss itself is larger; the default, measured ahead of
        ``"relative"`` on the linear and the cosine schedule) or ``"relative"`` (the drop as a fraction of the
        slow average: scale-free; the default before, so a checkpoint written then without a ``progress`` in its
        state is refused on resume with the line to add, ``progress: relative``).
    unbias:
        weight each sample by q_k/p_k (q_k the bucket's mass under the uniform draw: its share of the T
        timesteps, 1/K for EDM quantiles) so the objective stays that of uniform sampling; the weights average 1
        under p. Default off: without it the sampler changes what is trained, as a curriculum does.

    Among buckets whose loss is flat, what remains of the progress is the noise of the two averages, so p
    wanders between them (within the ε floor) rather than settling at uniform.

    Until every bucket has been observed once the draw is exactly ``torch.randint(0, T, (B,), generator=g)`` (an
    EDM process: the training log-normal exp(P_mean + P_std·randn)) with weight 1.

    **Lag** (:mod:`~.observations`): ``observe`` sums the batch's losses and counts per bucket on their device
    (``index_add``; no host read) and the averages take them a few steps later, in order.

    **Distributed**: the per-bucket sums and counts are all-reduced once per observation window (float64
    [window, 2, K]), so every rank holds the same averages and draws from the same p. Non-finite losses are
    dropped.
    """

    name = "learning-progress"
    reduce = "sum"
    CHANGED_DEFAULTS = {"progress": "relative"}
    supports = ("discrete", "continuous", "flow")

    def __init__(
        self,
        process,
        total_steps: int | None = None,
        buckets: int = 20,
        fast_rate: float = 0.1,
        slow_rate: float = 0.01,
        epsilon: float = 0.2,
        temperature: float = 1.0,
        progress: str | None = None,
        unbias: bool = False,
    ):
        super().__init__(process, total_steps)
        check_param("buckets", buckets, is_int(buckets) and buckets >= 1, "an integer >= 1")
        for pname, v in (("fast_rate", fast_rate), ("slow_rate", slow_rate)):
            check_param(pname, v, is_number(v) and 0 < v <= 1, "a number in (0, 1]")
        check_param("fast_rate", fast_rate, fast_rate > slow_rate, f"a rate above slow_rate={slow_rate!r}")
        check_param("epsilon", epsilon, is_number(epsilon) and 0 <= epsilon <= 1, "a number in [0, 1]")
        check_param("temperature", temperature, is_number(temperature) and temperature > 0, "a number > 0")
        given = progress is not None
        progress = "absolute" if progress is None else progress
        check_choice("progress", progress, PROGRESS)
        self._record_setting("progress", progress, given)
        check_param("unbias", unbias, isinstance(unbias, bool), "true or false")
        self.K = int(buckets)
        self.fast_rate, self.slow_rate = float(fast_rate), float(slow_rate)
        self.epsilon, self.temperature = float(epsilon), float(temperature)
        self.progress_kind, self.unbias = progress, unbias
        if self.kind == "flow":
            _clusters.flow_uniform(self.K)  # the same check of K as DDC's clusters
            self.mass = torch.full((self.K,), 1.0 / self.K, dtype=torch.float64)
        elif self.kind == "continuous":
            _clusters.build("quantile", process, self.K)  # the same check of K as DDC's clusters
            self.P_mean, self.P_std = float(process.P_mean), float(process.P_std)
            self.mass = torch.full((self.K,), 1.0 / self.K, dtype=torch.float64)
        else:
            bounds = _clusters.build("uniform", process, self.K)
            self.lo = torch.tensor([a for a, _ in bounds], dtype=torch.float64)
            self.hi = torch.tensor([b for _, b in bounds], dtype=torch.float64)
            self.mass = (self.hi - self.lo) / process.T
            sizes = (self.hi - self.lo).long()
            self.bucket_of_t = torch.repeat_interleave(torch.arange(self.K), sizes)
        self.fast = torch.zeros(self.K, dtype=torch.float64)
        self.slow = torch.zeros(self.K, dtype=torch.float64)
        self.seen = torch.zeros(self.K, dtype=torch.int64)

    # -- the density ------------------------------------------------------------------------------------------
    def warm(self) -> bool:
        """True once every bucket has been observed."""
        return bool((self.seen > 0).all())

    def progress(self) -> Tensor:
        """progress_k per bucket (float64 [K], ≥ 0; 0 for an unseen bucket)."""
        drop = (self.slow - self.fast).clamp(min=0)
        if self.progress_kind == "absolute":
            return torch.where(self.seen > 0, drop, torch.zeros_like(drop))
        rel = torch.where(self.slow > 0, drop / self.slow.clamp(min=1e-300), torch.zeros_like(drop))
        return torch.where(self.seen > 0, rel, torch.zeros_like(rel))

    def probs(self) -> Tensor:
        """The bucket distribution p (float64 [K], sums to 1): uniform over buckets until warm."""
        uniform = torch.full((self.K,), 1.0 / self.K, dtype=torch.float64)
        if not self.warm():
            return uniform
        prog = self.progress()
        if self.temperature != 1.0:
            prog = prog.pow(1.0 / self.temperature)
        total = prog.sum()
        if not (total > 0 and math.isfinite(float(total))):
            return uniform
        return (1.0 - self.epsilon) * prog / total + self.epsilon * uniform

    # -- drawing ----------------------------------------------------------------------------------------------
    def _draw(self, batch_size, generator):
        p = self.process
        if not self.warm():
            if self.kind == "flow":
                return p.clamp(torch.rand(batch_size, generator=generator)), None
            if not p.continuous:
                return torch.randint(0, p.T, (batch_size,), generator=generator), None
            return torch.exp(self.P_mean + self.P_std * torch.randn(batch_size, generator=generator)), None
        probs = self.probs()
        b = torch.multinomial(probs, batch_size, replacement=True, generator=generator)
        u = torch.rand(batch_size, dtype=torch.float64, generator=generator)
        if self.kind == "flow":
            t = p.clamp((b.double() + u) / self.K).float()
        elif p.continuous:
            q = ((b.double() + u) / self.K).clamp(_U_EPS, 1 - _U_EPS)
            t = torch.exp(self.P_mean + self.P_std * torch.special.ndtri(q)).float()
        else:
            lo, hi = self.lo[b], self.hi[b]
            t = torch.minimum(lo + torch.floor(u * (hi - lo)), hi - 1).long()
        w = (self.mass[b] / probs[b]).float() if self.unbias else None
        return t, w

    # -- observing --------------------------------------------------------------------------------------------
    def bucket(self, t: Tensor) -> Tensor:
        """The bucket index of each noise level in ``t`` (int64, on ``t``'s device; no host read)."""
        t = t.detach()
        if self.kind == "flow":
            return noise_levels.bucket(self.process, t, self.K)
        if self.process.continuous:
            u = torch.special.ndtr((t.double().log() - self.P_mean) / self.P_std)
            return (u * self.K).long().clamp(0, self.K - 1)
        if self.bucket_of_t.device != t.device:  # the lookup table follows the draws to their device, once
            self.bucket_of_t = to_device(self.bucket_of_t, t.device)
        return self.bucket_of_t[t.long()]

    def _observe(self, t: Tensor, per_sample_loss: Tensor) -> None:
        stats = bucket_sums(self.bucket(t), per_sample_loss, self.K)
        for host, _, _ in self._lagged_observations(stats):
            self._update(*host)

    def _update(self, sums: Tensor, counts: Tensor) -> None:
        """Move the two averages of every bucket the step's losses hit (host statistics of one step)."""
        self.fast = moving_average(self.fast, sums, counts, self.seen, self.fast_rate)
        self.slow = moving_average(self.slow, sums, counts, self.seen, self.slow_rate)
        self.seen += counts.long()

    # -- state ------------------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        if not self.warm():
            return {"warm": False}
        p = self.probs()
        k = int(p.argmax())
        return {"warm": True, "top_bucket": k, "p_top": round(float(p[k]), 4)}

    def _state(self) -> dict[str, Any]:
        return {
            "buckets": self.K,
            "fast": self.fast.clone(),
            "slow": self.slow.clone(),
            "seen": self.seen.clone(),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        if int(state["buckets"]) != self.K:
            raise ValueError(
                f"learning-progress sampler state has buckets={state['buckets']} but this sampler has "
                f"buckets={self.K}; resume with the same settings"
            )
        for key, dtype in (("fast", torch.float64), ("slow", torch.float64), ("seen", torch.int64)):
            v = torch.as_tensor(state[key], dtype=dtype).cpu()
            if v.shape != (self.K,):
                raise ValueError(
                    f"learning-progress sampler state {key!r} has shape {tuple(v.shape)}, not ({self.K},)"
                )
            setattr(self, key, v.clone())
