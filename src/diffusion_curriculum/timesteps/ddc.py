"""DDC: the denoising-task-difficulty curriculum of Kim et al., "Denoising Task Difficulty-based Curriculum for
Training Diffusion Models" (arXiv 2403.10348), as specified in METHODS.md §1.

Finding: denoising is harder at small t (low noise) — per-interval models converge more slowly there and
D_KL(p_{t−1} ‖ p_t) is larger there — so train easy → hard: the noisiest cluster first, then add cleaner ones,
moving on when the training loss stops improving (patience), and finish uniform over all noise levels.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from ..errors import suggest
from . import clusters as _clusters
from .base import TimestepSampler, check_param, global_mean, is_int, is_number, register

PACINGS = ("adaptive", "fixed")
ORDERS = ("easy-to-hard", "anti")

#: the largest float64 below 1 — keeps the inverse normal CDF finite
_P_MAX = 1.0 - 2.0**-53
_P_MIN = 2.0**-1022


def _name_check(name: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(
            f"sampler parameter {name}={value!r} is invalid{suggest(value, allowed)}; "
            f"allowed: {', '.join(allowed)}"
        )


@register
class DDC(TimestepSampler):
    """Denoising-task-difficulty curriculum (Kim et al. 2024, arXiv 2403.10348; METHODS.md §1).

    **Clusters.** The noise levels are split into N = ``clusters`` clusters C_1 (cleanest, hardest) … C_N
    (noisiest, easiest) by ``clustering`` (see :mod:`~diffusion_curriculum.timesteps.clusters`): ``uniform``
    (discrete), ``snr``, ``log-snr`` (discrete) or ``quantile`` (EDM); ``clustering=None``, the default,
    picks ``uniform`` for a discrete process and ``quantile`` for an EDM process.

    **Stages.** Stage n = 1 … N trains on C_{N−n+1} ∪ … ∪ C_N (cumulative, noisiest first); ``order="anti"``
    reverses the curriculum for ablations (stage n = C_1 ∪ … ∪ C_n, hardest first). Inside a stage a discrete t is
    uniform over the union (one contiguous range, one ``randint``); an EDM ln σ is drawn from the training
    log-normal N(P_mean, P_std²) truncated to the union (inverse-CDF sampling in float64). With
    ``per_cluster_share=True`` each batch takes an equal share from every active cluster (uniform / truncated
    log-normal inside each): with k active clusters and batch B each gets ⌊B/k⌋ draws and the r = B mod k
    left-over draws go to r consecutive clusters starting at cluster (step·r) mod k of the active list
    (ordered cleanest first), so the extras rotate and every cluster gets exactly the same count over k
    consecutive steps; the batch is then shuffled with the generator.

    **Joint phase.** After stage N the draw is uniform over all noise levels for the rest of training: exactly
    ``torch.randint(0, T, (B,), generator=g)`` for a discrete process, and ``exp(P_mean + P_std·randn)`` (the
    ``lognormal`` sampler's draw) for an EDM process.

    **Pacing.** ``pacing="adaptive"`` (the paper's): each :meth:`observe` takes the mean of the per-sample
    losses, all-reduced across ranks (so every rank takes the same decision), optionally smoothed,
    value = loss_ema·previous + (1 − loss_ema)·loss. It keeps the best value of the stage and a counter of steps
    without improvement (improvement = value < best − ``min_delta``); when the counter reaches τ = ``patience``
    the next stage starts and best, counter and smoothing restart. The first step of a stage always improves on
    the initial best (+∞), so a flat loss holds each stage for exactly τ + 1 steps. ``max_steps_per_stage``
    forces the advance after that many steps in a stage. ``pacing="fixed"`` (the non-adaptive baseline the paper
    compares against) advances every ``steps_per_stage`` steps — stage n covers steps [(n−1)·S, n·S) and the
    joint phase starts at step N·S; ``steps_per_stage`` is required then (there is no default) and rejected
    with adaptive pacing. Weights are always 1.

    **Defaults** [reconstruction]: N = 20 uniform clusters and τ = 200 are the project's documented choice, not
    numbers from the paper; ``loss_ema`` (default 0 = no smoothing), ``max_steps_per_stage`` (default none) and
    ``pacing="fixed"`` / ``steps_per_stage`` are [reconstruction] options. The curriculum takes at least
    :meth:`min_curriculum_steps`; building the sampler warns when that is half of ``total_steps`` or more (on
    digits, τ = 200 with N = 20 in 4000 steps never left the noisiest stages: size τ to the budget).
    """

    name = "ddc"

    def __init__(
        self,
        process,
        total_steps: int | None = None,
        clusters: int = 20,
        clustering: str | None = None,
        patience: int = 200,
        min_delta: float = 0.0,
        loss_ema: float = 0.0,
        max_steps_per_stage: int | None = None,
        pacing: str = "adaptive",
        steps_per_stage: int | None = None,
        order: str = "easy-to-hard",
        per_cluster_share: bool = False,
    ):
        super().__init__(process, total_steps)
        cont = bool(process.continuous)
        if clustering is None:
            clustering = "quantile" if cont else "uniform"
        check_param("clusters", clusters, is_int(clusters) and clusters >= 1, "an integer >= 1")
        if not isinstance(clustering, str):
            check_param("clustering", clustering, False, ", ".join(_clusters.KINDS))
        check_param("patience", patience, is_int(patience) and patience >= 1, "an integer >= 1")
        check_param("min_delta", min_delta, is_number(min_delta) and min_delta >= 0, "a finite number >= 0")
        check_param("loss_ema", loss_ema, is_number(loss_ema) and 0 <= loss_ema < 1, "a number in [0, 1)")
        check_param(
            "max_steps_per_stage",
            max_steps_per_stage,
            max_steps_per_stage is None or (is_int(max_steps_per_stage) and max_steps_per_stage >= 1),
            "an integer >= 1 or None",
        )
        _name_check("pacing", pacing, PACINGS)
        check_param(
            "steps_per_stage",
            steps_per_stage,
            steps_per_stage is None or (is_int(steps_per_stage) and steps_per_stage >= 1),
            "an integer >= 1 (with pacing='fixed') or None",
        )
        check_param(
            "steps_per_stage",
            steps_per_stage,
            pacing != "fixed" or steps_per_stage is not None,
            "an integer >= 1, required with pacing='fixed'",
        )
        check_param(
            "steps_per_stage",
            steps_per_stage,
            pacing == "fixed" or steps_per_stage is None,
            "None with pacing='adaptive' (set pacing='fixed' to advance every steps_per_stage steps)",
        )
        _name_check("order", order, ORDERS)
        check_param(
            "per_cluster_share", per_cluster_share, isinstance(per_cluster_share, bool), "true or false"
        )

        self.intervals = _clusters.build(clustering, process, clusters)
        self.n_clusters = int(clusters)
        self.clustering = clustering
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.loss_ema = float(loss_ema)
        self.max_steps_per_stage = max_steps_per_stage
        self.pacing = pacing
        self.steps_per_stage = steps_per_stage
        self.order = order
        self.per_cluster_share = per_cluster_share
        if cont:
            self.P_mean, self.P_std = float(process.P_mean), float(process.P_std)
        self._warn_if_budget_too_short()
        # the pacing state (all plain values; see _state)
        self.phase = "curriculum"
        self.stage = 1
        self.best = math.inf
        self.wait = 0
        self.stage_steps = 0
        self.ema = 0.0

    def min_curriculum_steps(self) -> int:
        """The fewest steps the N stages can take before the joint phase: N·S with fixed pacing; with adaptive
        pacing N·(τ + 1) (a stage whose loss never improves after its first step), or N·``max_steps_per_stage``
        when that cap is smaller. A loss that keeps improving makes the real curriculum longer."""
        if self.pacing == "fixed":
            per_stage = self.steps_per_stage
        else:
            per_stage = self.patience + 1
            if self.max_steps_per_stage is not None:
                per_stage = min(per_stage, self.max_steps_per_stage)
        return self.n_clusters * per_stage

    def _warn_if_budget_too_short(self) -> None:
        """Warn when the curriculum alone needs at least half of ``total_steps``: then the cleanest noise
        levels are reached late or never (measured on digits: τ = 200, N = 20 in 4000 steps never got past stage
        5 and produced noise; BENCHMARKS.md, "Strategy comparison on digits")."""
        if self.total_steps is None:
            return
        need = self.min_curriculum_steps()
        if 2 * need >= self.total_steps:
            knob = "steps_per_stage" if self.pacing == "fixed" else "patience or set max_steps_per_stage"
            warnings.warn(
                f"ddc: the {self.n_clusters} curriculum stages need at least {need} of the {self.total_steps} "
                f"planned steps (more while the loss keeps improving), so the cleanest noise levels are trained "
                f"late or never; lower {knob} so the stages end well before the budget",
                UserWarning,
                stacklevel=3,
            )

    # -- stages -------------------------------------------------------------------------------------
    def active_clusters(self) -> list[int]:
        """0-based indices into :attr:`intervals` of the clusters trained on now, cleanest first."""
        N = self.n_clusters
        if self.phase == "joint":
            return list(range(N))
        if self.order == "anti":
            return list(range(self.stage))
        return list(range(N - self.stage, N))

    def stage_range(self) -> tuple:
        """The current union of active clusters: ``(lo, hi)`` timesteps (half-open) for a discrete process,
        ``(ln_sigma_lo, ln_sigma_hi)`` for EDM; the full range in the joint phase."""
        a = self.active_clusters()
        return self.intervals[a[0]][0], self.intervals[a[-1]][1]

    def _advance(self) -> None:
        if self.stage < self.n_clusters:
            self.stage += 1
        else:
            self.phase = "joint"
        self.best, self.wait, self.stage_steps, self.ema = math.inf, 0, 0, 0.0

    # -- drawing ------------------------------------------------------------------------------------
    def _shares(self, batch_size: int, k: int) -> list[int]:
        base, r = divmod(batch_size, k)
        counts = [base] * k
        off = (self.step * r) % k
        for j in range(r):
            counts[(off + j) % k] += 1
        return counts

    def _truncated_lognormal(self, lo: Tensor, hi: Tensor, batch_size: int, generator, device) -> Tensor:
        """σ with ln σ ~ N(P_mean, P_std²) truncated to [lo, hi] (per-sample float64 bounds), by inverse CDF."""
        pa = torch.special.ndtr((lo - self.P_mean) / self.P_std)
        pb = torch.special.ndtr((hi - self.P_mean) / self.P_std)
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64, device=device)
        p = (pa + u * (pb - pa)).clamp(_P_MIN, _P_MAX)
        ls = (self.P_mean + self.P_std * torch.special.ndtri(p)).clamp(lo, hi)
        return ls.exp().float()

    def _draw(self, batch_size, generator):
        device = generator.device if generator is not None else None
        cont = self.process.continuous
        if self.phase == "joint":
            if not cont:
                return torch.randint(
                    0, self.process.T, (batch_size,), generator=generator, device=device
                ), None
            z = torch.randn(batch_size, generator=generator, device=device)
            return torch.exp(self.P_mean + self.P_std * z), None
        act = self.active_clusters()
        if not self.per_cluster_share or len(act) == 1:
            lo, hi = self.stage_range()
            if not cont:
                return torch.randint(lo, hi, (batch_size,), generator=generator, device=device), None
            f64 = dict(dtype=torch.float64, device=device)
            lo_t, hi_t = torch.full((batch_size,), lo, **f64), torch.full((batch_size,), hi, **f64)
            return self._truncated_lognormal(lo_t, hi_t, batch_size, generator, device), None
        counts = torch.tensor(self._shares(batch_size, len(act)), device=device)
        bounds = torch.tensor([self.intervals[i] for i in act], dtype=torch.float64, device=device)
        lo = bounds[:, 0].repeat_interleave(counts)
        hi = bounds[:, 1].repeat_interleave(counts)
        if not cont:
            u = torch.rand(batch_size, generator=generator, dtype=torch.float64, device=device)
            t = lo + torch.floor(u * (hi - lo))
            t = torch.minimum(t, hi - 1).long()
        else:
            t = self._truncated_lognormal(lo, hi, batch_size, generator, device)
        perm = torch.randperm(batch_size, generator=generator, device=device)
        return t[perm], None

    # -- pacing -------------------------------------------------------------------------------------
    def _observe(self, t: Tensor, per_sample_loss: Tensor) -> None:
        if self.phase == "joint":
            return
        self.stage_steps += 1
        if self.pacing == "adaptive":
            x = float(global_mean(per_sample_loss.detach().float().mean()).item())
            if self.loss_ema > 0:
                x = x if self.stage_steps == 1 else self.loss_ema * self.ema + (1 - self.loss_ema) * x
                self.ema = x
            if x < self.best - self.min_delta:
                self.best, self.wait = x, 0
            else:
                self.wait += 1
            advance = self.wait >= self.patience
        else:
            advance = self.stage_steps >= self.steps_per_stage
        if self.max_steps_per_stage is not None and self.stage_steps >= self.max_steps_per_stage:
            advance = True
        if advance:
            self._advance()

    # -- state --------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        if self.phase == "joint":
            return {"phase": "joint", "stage": self.n_clusters, "stages": self.n_clusters}
        return {"phase": "curriculum", "stage": self.stage, "stages": self.n_clusters, "wait": self.wait}

    def _state(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "stage": self.stage,
            "stages": self.n_clusters,
            "clustering": self.clustering,
            "order": self.order,
            "best": self.best,
            "wait": self.wait,
            "stage_steps": self.stage_steps,
            "ema": self.ema,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        for key, mine in (
            ("stages", self.n_clusters),
            ("clustering", self.clustering),
            ("order", self.order),
        ):
            if key in state and state[key] != mine:
                raise ValueError(
                    f"ddc sampler state has {key}={state[key]!r} but this sampler has {key}={mine!r}; "
                    "resume with the same DDC settings"
                )
        phase = str(state["phase"])
        if phase not in ("curriculum", "joint"):
            raise ValueError(f"ddc sampler state has phase={phase!r}; allowed: curriculum, joint")
        stage = int(state["stage"])
        if not 1 <= stage <= self.n_clusters:
            raise ValueError(f"ddc sampler state has stage={stage}; allowed: 1 … {self.n_clusters}")
        self.phase, self.stage = phase, stage
        self.best = float(state["best"])
        self.wait = int(state["wait"])
        self.stage_steps = int(state["stage_steps"])
        self.ema = float(state["ema"])

    def __repr__(self) -> str:
        return (
            f"DDC(process={self.process!r}, clusters={self.n_clusters}, clustering={self.clustering!r}, "
            f"pacing={self.pacing!r}, order={self.order!r}, stage={self.stage}, phase={self.phase!r}, "
            f"step={self.step})"
        )
