"""The ``optimal-gap`` strategy: train where the loss is furthest above its exact optimum.

The optimal-loss view of diffusion training ("optimal loss" estimation, arXiv 2506.13763, ICLR 2026) measures
training progress per noise level as the gap between the loss and the best loss any denoiser can reach there, and
builds its schedule on that gap. For a finite training set this library computes the optimum exactly
(:mod:`diffusion_curriculum.optimal_loss`: the memorising posterior mean's loss J* per noise-level bucket), so
the gap needs no estimate. The sampler keeps a moving average L_k of the observed training loss per bucket
(the buckets of :mod:`~diffusion_curriculum.noise_levels`) and draws bucket k with

    p_k = (1 − ε)·g_k / Σ_j g_j + ε/K,    g_k = f(max(L_k − J*_k, 0))

with f the ``form``: ``gap`` (f(x) = x), ``sqrt`` (√x: flatter) or ``relative`` (the gap as a share of L_k), the
level uniform inside the bucket. The form and constants are the project's choices, picked by benchmark
[reconstruction: the paper's schedule is built for its own estimator; this is the rule with the exact floor].

The floor J* comes from the training data, which a sampler does not see: the trainer computes it when the run
starts (the ``needs_floor`` attribute), a loop of one's own calls :meth:`OptimalGap.set_floor` with
:func:`diffusion_curriculum.optimal_loss.per_bucket_floor` before training. Until it is set, and until every
bucket has been observed, the draw is uniform over the buckets.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .. import noise_levels
from .base import TimestepSampler, check_choice, check_param, is_int, is_number, register
from .observations import bucket_sums, moving_average

FORMS = ("gap", "sqrt", "relative")


@register
class OptimalGap(TimestepSampler):
    """p(bucket) ∝ the bucket's loss above its exact optimum (formula in the module docstring).

    ``buckets`` K (20), ``rate`` of the per-bucket loss average (0.05 per observation of the bucket),
    ``epsilon`` the uniform share (0.1), ``form`` (``gap``, ``sqrt``, ``relative``). The per-bucket loss sums and
    counts go through the lagged, once-per-window all-reduce of :mod:`~.observations` (no host read per step;
    every rank draws from the same p). Non-finite losses are dropped."""

    name = "optimal-gap"
    reduce = "sum"
    supports = ("discrete", "continuous", "flow")
    #: the trainer computes the optimal loss of the training data per bucket and calls :meth:`set_floor`
    needs_floor = True

    def __init__(
        self,
        process,
        total_steps: int | None = None,
        buckets: int = 20,
        rate: float = 0.05,
        epsilon: float = 0.1,
        form: str = "gap",
    ):
        super().__init__(process, total_steps)
        check_param(
            "buckets", buckets, is_int(buckets) and 1 <= buckets <= 10_000, "an integer in [1, 10000]"
        )
        if self.kind == "discrete":
            check_param("buckets", buckets, buckets <= process.T, f"an integer <= T = {process.T}")
        check_param("rate", rate, is_number(rate) and 0 < rate <= 1, "a number in (0, 1]")
        check_param("epsilon", epsilon, is_number(epsilon) and 0 <= epsilon <= 1, "a number in [0, 1]")
        check_choice("form", form, FORMS)
        self.K, self.rate, self.epsilon, self.form = int(buckets), float(rate), float(epsilon), form
        self.loss = torch.zeros(self.K, dtype=torch.float64)
        self.seen = torch.zeros(self.K, dtype=torch.int64)
        self.floor: Tensor | None = None

    def set_floor(self, floor) -> None:
        """The optimal loss J* of each of the K buckets (in the loss space ``observe`` is given)."""
        f = torch.as_tensor(floor, dtype=torch.float64).cpu()
        if f.shape != (self.K,):
            raise ValueError(
                f"optimal-gap: set_floor needs {self.K} values (one per bucket), got shape {tuple(f.shape)}"
            )
        bad = torch.nonzero(~torch.isfinite(f)).flatten().tolist()
        if bad:
            raise ValueError(
                f"optimal-gap: set_floor got non-finite values in buckets {bad}; give finite losses"
            )
        self.floor = f.clone()

    def ready(self) -> bool:
        """True once the floor is set and every bucket has been observed."""
        return self.floor is not None and bool((self.seen > 0).all())

    def probs(self) -> Tensor:
        """The bucket distribution p (float64 [K]); uniform until :meth:`ready`."""
        uniform = torch.full((self.K,), 1.0 / self.K, dtype=torch.float64)
        if not self.ready():
            return uniform
        gap = (self.loss - self.floor).clamp(min=0)
        if self.form == "sqrt":
            gap = gap.sqrt()
        elif self.form == "relative":
            gap = gap / self.loss.clamp(min=1e-300)
        total = gap.sum()
        if not (total > 0 and math.isfinite(float(total))):
            return uniform
        return (1.0 - self.epsilon) * gap / total + self.epsilon * uniform

    def _draw(self, batch_size, generator):
        b = torch.multinomial(self.probs(), batch_size, replacement=True, generator=generator)
        u = torch.rand(batch_size, dtype=torch.float64, generator=generator)
        t = noise_levels.inside(self.process, b, u, self.K)
        if self.kind == "flow":
            t = self.process.clamp(t)
        return t, None

    def _observe(self, t: Tensor, per_sample_loss: Tensor) -> None:
        stats = bucket_sums(noise_levels.bucket(self.process, t.detach(), self.K), per_sample_loss, self.K)
        for host, _, _ in self._lagged_observations(stats):
            self._update(*host)

    def _update(self, sums: Tensor, counts: Tensor) -> None:
        self.loss = moving_average(self.loss, sums, counts, self.seen, self.rate)
        self.seen += counts.long()

    def status(self) -> dict[str, Any]:
        if not self.ready():
            return {"ready": False}
        p = self.probs()
        k = int(p.argmax())
        return {"ready": True, "top_bucket": k, "p_top": round(float(p[k]), 4)}

    def _state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"buckets": self.K, "loss": self.loss.clone(), "seen": self.seen.clone()}
        if self.floor is not None:
            out["floor"] = self.floor.clone()
        return out

    def _load_state(self, state: dict[str, Any]) -> None:
        if int(state["buckets"]) != self.K:
            raise ValueError(
                f"optimal-gap sampler state has buckets={state['buckets']} but this sampler has buckets={self.K}; "
                "resume with the same settings"
            )
        self.loss = torch.as_tensor(state["loss"], dtype=torch.float64).cpu().clone()
        self.seen = torch.as_tensor(state["seen"], dtype=torch.int64).cpu().clone()
        if state.get("floor") is not None:
            self.set_floor(state["floor"])
