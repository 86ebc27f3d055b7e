"""DDC: the denoising-task-difficulty curriculum of Kim et al., "Denoising Task Difficulty-based Curriculum for
Training Diffusion Models" (arXiv 2403.10348); the formulas and the reconstructed details are in
docs/methods.md, "DDC".

Finding: denoising is harder at small t (low noise) — per-interval models converge more slowly there and
D_KL(p_{t−1} ‖ p_t) is larger there — so train easy → hard: the noisiest cluster first, then add cleaner ones,
moving on when the stage's training loss has converged (or a step cap is reached), and finish with joint
training over all noise levels.
"""

from __future__ import annotations

import math
import statistics
import warnings
from typing import Any

import torch
from torch import Tensor

from . import clusters as _clusters
from .base import (
    TimestepSampler,
    build_spec,
    check_choice,
    check_param,
    is_int,
    is_number,
    register,
)

PACINGS = ("adaptive", "patience", "fixed")
ORDERS = ("easy-to-hard", "anti")

#: τ_max of adaptive pacing when the planned number of steps is unknown [reconstruction]
DEFAULT_MAX_STEPS_PER_STAGE = 2000
#: adaptive pacing's convergence window is at most this many steps, and at least _MIN_WINDOW
DEFAULT_WINDOW = 200
_MIN_WINDOW = 5


def _optional_int(name: str, value, rest: str = "") -> None:
    check_param(
        name, value, value is None or (is_int(value) and value >= 1), f"an integer >= 1 or None{rest}"
    )


@register
class DDC(TimestepSampler):
    """Denoising-task-difficulty curriculum (Kim et al. 2024, arXiv 2403.10348; docs/methods.md, "DDC").

    **Clusters.** The noise levels are split into N = ``clusters`` clusters C_1 (cleanest, hardest) … C_N
    (noisiest, easiest) by ``clustering`` (see :mod:`~diffusion_curriculum.timesteps.clusters`): ``uniform``
    (discrete and flow: equal widths of t), ``snr`` (discrete), ``log-snr`` (discrete and flow) or ``quantile``
    (EDM); ``clustering=None``, the default, picks ``uniform`` for a discrete or flow process and ``quantile``
    for an EDM process.

    **Stages.** Stage n = 1 … N trains on C_{N−n+1} ∪ … ∪ C_N (cumulative, noisiest first); ``order="anti"``
    reverses the curriculum for ablations (stage n = C_1 ∪ … ∪ C_n, hardest first). Inside a stage a discrete t is
    uniform over the union (one contiguous range, one ``randint``); an EDM ln σ is drawn from the training
    log-normal N(P_mean, P_std²) truncated to the union (inverse-CDF sampling in float64); a flow t is uniform
    over the union (an interval of t, clamped to [eps, 1 − eps]). With
    ``per_cluster_share=True`` each batch takes an equal share from every active cluster (uniform / truncated
    log-normal inside each): with k active clusters and batch B each gets ⌊B/k⌋ draws and the r = B mod k
    left-over draws go to r consecutive clusters starting at cluster (step·r) mod k of the active list
    (ordered cleanest first), so the extras rotate and every cluster gets exactly the same count over k
    consecutive steps; the batch is then shuffled with the generator.

    **Joint phase.** After stage N the ``joint`` sampler draws for the rest of training (its draws, weights
    and state are DDC's from then on; it is observed only in the joint phase, so its step counter counts joint
    steps). ``joint=None`` (the default) is the process's own training distribution: exactly
    ``torch.randint(0, T, (B,), generator=g)`` (the ``uniform`` sampler) for a discrete process and the
    ``lognormal`` sampler's exp(P_mean + P_std·randn) for an EDM process, the ``uniform`` sampler's t ~ U(0, 1)
    for a flow process [reconstruction: uniform is rectified flow's own density]. Any other registered sampler may be
    named, with its parameters as a mapping: ``joint="loss-second-moment"`` or ``joint={"name": "speed",
    "k": 5}``; it is built with the same ``total_steps``.

    **Pacing.** Every :meth:`observe` in the curriculum takes the mean of the batch's per-sample losses on their
    device; the pacing reads it a few steps later (:mod:`~.observations`: no host read of the step in flight),
    averaged over the ranks (one all-reduce per observation window), so every rank takes the same decision. A
    step is counted for the stage it was drawn in: the steps still in flight when a stage ends are not counted
    for the next one, and a non-finite batch mean is not counted at all (the trainer zeroes such a step).
    ``pacing="fixed"`` reads no loss and counts every step at once.

    * ``pacing="adaptive"`` (the default; the paper's "transitions to the next curriculum stage when the
      current training loss converges within a maximum patience iteration"): a stage ends when its loss has
      converged or after τ_max = ``max_steps_per_stage`` steps, whichever is first. Convergence
      [reconstruction]: the stage's steps are cut into consecutive windows of W = ``window`` steps; at the end
      of each window after the first, with m_prev and m the medians of the watched loss over the previous and
      the latest window, the stage has converged when (m_prev − m)/m_prev < ``rel_tol`` — the loss improved by
      less than that fraction over one window (medians, so single spiky batches do not decide). A stage thus
      lasts at least 2W steps (unless τ_max is smaller). Defaults: τ_max = max(1, ⌊``curriculum_fraction``·
      ``total_steps``/N⌋), so the whole curriculum takes at most that fraction of the run
      (``DEFAULT_MAX_STEPS_PER_STAGE`` = 2000 per stage when ``total_steps`` is unknown); W =
      clip(⌊τ_max/4⌋, 5, 200); ``rel_tol`` = 0.01.
    * ``pacing="patience"`` (the library's earlier rule): the watched value, optionally smoothed
      (value = loss_ema·previous + (1 − loss_ema)·loss), is compared with the stage's best; the stage ends
      after τ = ``patience`` steps without improvement (improvement = value < best − ``min_delta``), or after
      ``max_steps_per_stage`` steps when that is set. The first step of a stage always improves on the initial
      best (+∞), so a flat loss holds each stage for exactly τ + 1 steps. A loss that keeps inching down makes a
      new best every few steps and holds the stage indefinitely — the reason it is no longer the default.
    * ``pacing="fixed"`` (the non-adaptive baseline the paper compares against) advances every
      ``steps_per_stage`` steps — stage n covers steps [(n−1)·S, n·S) and the joint phase starts at step N·S;
      ``steps_per_stage`` is required then (there is no default) and rejected with the other pacings.

    :meth:`status` shows the stage and how the last stage ended (``converged`` or ``cap``). Weights are 1
    during the curriculum.

    **Defaults** [reconstruction]: N = 20 uniform clusters (the interval count of the paper's observational
    study), ``curriculum_fraction``, ``window``, ``rel_tol``, τ = 200 for ``pacing="patience"``, ``loss_ema``
    (0 = no smoothing) are the project's documented choices (docs/methods.md, "DDC"), not numbers from the
    paper. Building the sampler warns when the stages need at least half of ``total_steps``
    (:meth:`min_curriculum_steps`).
    """

    name = "ddc"
    reduce = "sum"
    supports = ("discrete", "continuous", "flow")

    def __init__(
        self,
        process,
        total_steps: int | None = None,
        clusters: int = 20,
        clustering: str | None = None,
        pacing: str = "adaptive",
        curriculum_fraction: float | None = None,
        max_steps_per_stage: int | None = None,
        window: int | None = None,
        rel_tol: float | None = None,
        patience: int | None = None,
        min_delta: float | None = None,
        loss_ema: float | None = None,
        steps_per_stage: int | None = None,
        order: str = "easy-to-hard",
        per_cluster_share: bool = False,
        joint: str | dict | None = None,
    ):
        super().__init__(process, total_steps)
        cont = self.kind == "continuous"
        if clustering is None:
            clustering = "quantile" if cont else "uniform"
        check_param("clusters", clusters, is_int(clusters) and clusters >= 1, "an integer >= 1")
        if not isinstance(clustering, str):
            check_param("clustering", clustering, False, ", ".join(_clusters.KINDS))
        check_choice("pacing", pacing, PACINGS)
        pace = self._pacing_params(
            pacing,
            curriculum_fraction=curriculum_fraction,
            window=window,
            rel_tol=rel_tol,
            patience=patience,
            min_delta=min_delta,
            loss_ema=loss_ema,
        )
        _optional_int("max_steps_per_stage", max_steps_per_stage)
        _optional_int("steps_per_stage", steps_per_stage, " (with pacing='fixed')")
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
            f"None with pacing={pacing!r} (set pacing='fixed' to advance every steps_per_stage steps)",
        )
        check_choice("order", order, ORDERS)
        check_param(
            "per_cluster_share", per_cluster_share, isinstance(per_cluster_share, bool), "true or false"
        )

        self.intervals = _clusters.build(clustering, process, clusters)
        self.n_clusters = int(clusters)
        self.clustering = clustering
        self.pacing = pacing
        self.curriculum_fraction = float(pace["curriculum_fraction"])
        self.rel_tol = float(pace["rel_tol"])
        self.patience = int(pace["patience"])
        self.min_delta = float(pace["min_delta"])
        self.loss_ema = float(pace["loss_ema"])
        self.max_steps_per_stage = self._resolve_cap(max_steps_per_stage)
        self.window = self._resolve_window(pace["window"])
        self.steps_per_stage = steps_per_stage
        self.order = order
        self.per_cluster_share = per_cluster_share
        if joint is None:  # the process's own training distribution
            joint = "lognormal" if cont else "uniform"
        self.joint = build_spec("joint", joint, process, total_steps=total_steps, exclude=("ddc",))
        if cont:
            self.P_mean, self.P_std = float(process.P_mean), float(process.P_std)
        self._warn_if_budget_too_short()
        # the pacing state (all plain values; see _state)
        self.phase = "curriculum"
        self.stage = 1
        self.stage_steps = 0
        self.best = math.inf  # patience pacing
        self.wait = 0
        self.ema = 0.0
        self.window_losses: list[float] = []  # adaptive pacing
        self.prev_median: float | None = None
        self.last_end = ""  # how the previous stage ended: "converged", "cap", "patience" or "fixed"
        self.converged_stages = 0
        self.capped_stages = 0

    #: each pacing's own parameters and their defaults (None = derived); the others must stay unset
    PACING_PARAMS = {
        "adaptive": {"curriculum_fraction": 0.25, "window": None, "rel_tol": 0.01},
        "patience": {"patience": 200, "min_delta": 0.0, "loss_ema": 0.0},
        "fixed": {},
    }

    @classmethod
    def _pacing_params(cls, pacing: str, **given) -> dict[str, Any]:
        """Check the pacing parameters and fill in the defaults of ``pacing``'s own; a parameter that belongs
        to another pacing is an error (today's configs that set ``patience`` must say ``pacing: patience``)."""
        own = cls.PACING_PARAMS[pacing]
        for name, value in given.items():
            if value is not None and name not in own:
                other = next(p for p, ps in cls.PACING_PARAMS.items() if name in ps)
                raise ValueError(
                    f"sampler parameter {name}={value!r} belongs to pacing={other!r}, but pacing={pacing!r}; "
                    f"set pacing={other!r} to use it"
                    + (
                        " (with pacing='adaptive' a stage ends at convergence or after max_steps_per_stage)"
                        if pacing == "adaptive"
                        else ""
                    )
                )
        defaults = {k: v for ps in cls.PACING_PARAMS.values() for k, v in ps.items()}
        out = {name: defaults[name] if v is None else v for name, v in given.items()}
        f, w, tol = out["curriculum_fraction"], out["window"], out["rel_tol"]
        check_param(
            "curriculum_fraction",
            f,
            is_number(f) and 0 < f <= 1,
            "a number in (0, 1] (the largest share of total_steps the curriculum may take)",
        )
        _optional_int("window", w)
        check_param("rel_tol", tol, is_number(tol) and 0 <= tol < 1, "a number in [0, 1)")
        tau, md, ema = out["patience"], out["min_delta"], out["loss_ema"]
        check_param("patience", tau, is_int(tau) and tau >= 1, "an integer >= 1")
        check_param("min_delta", md, is_number(md) and md >= 0, "a finite number >= 0")
        check_param("loss_ema", ema, is_number(ema) and 0 <= ema < 1, "a number in [0, 1)")
        return out

    def _resolve_cap(self, cap: int | None) -> int | None:
        """τ_max: the given cap; for adaptive pacing without one, ⌊curriculum_fraction·total_steps/N⌋ (at least
        1), or DEFAULT_MAX_STEPS_PER_STAGE when total_steps is unknown."""
        if cap is not None or self.pacing != "adaptive":
            return cap
        if self.total_steps is None:
            return DEFAULT_MAX_STEPS_PER_STAGE
        return max(1, int(self.curriculum_fraction * self.total_steps) // self.n_clusters)

    def _resolve_window(self, window: int | None) -> int | None:
        if self.pacing != "adaptive":
            return None
        if window is not None:
            return int(window)
        return min(DEFAULT_WINDOW, max(_MIN_WINDOW, self.max_steps_per_stage // 4))

    def min_curriculum_steps(self) -> int:
        """The fewest steps the N stages can take before the joint phase: N·S with fixed pacing; N·min(2W, τ_max)
        with adaptive pacing (a stage is judged after two windows); N·(τ + 1) with patience pacing (a stage whose
        loss never improves after its first step), or N·``max_steps_per_stage`` when that cap is smaller."""
        if self.pacing == "fixed":
            per_stage = self.steps_per_stage
        elif self.pacing == "adaptive":
            per_stage = 2 * self.window
        else:
            per_stage = self.patience + 1
        if self.max_steps_per_stage is not None:
            per_stage = min(per_stage, self.max_steps_per_stage)
        return self.n_clusters * per_stage

    def max_curriculum_steps(self) -> int | None:
        """The most steps the curriculum can take (N·τ_max, or N·S with fixed pacing); ``None`` when no cap
        bounds it (patience pacing without ``max_steps_per_stage``)."""
        if self.pacing == "fixed":
            return self.n_clusters * self.steps_per_stage
        if self.max_steps_per_stage is None:
            return None
        return self.n_clusters * self.max_steps_per_stage

    def _warn_if_budget_too_short(self) -> None:
        """Warn when the curriculum alone needs at least half of ``total_steps``: then the cleanest noise
        levels are reached late or never (measured on digits: patience τ = 200, N = 20 in 4000 steps never got
        past stage 5 and produced noise; BENCHMARKS.md, "Strategy comparison on digits")."""
        if self.total_steps is None:
            return
        need = self.min_curriculum_steps()
        if 2 * need >= self.total_steps:
            knob = {
                "fixed": "steps_per_stage",
                "adaptive": "clusters, max_steps_per_stage, window or curriculum_fraction",
                "patience": "patience or set max_steps_per_stage",
            }[self.pacing]
            warnings.warn(
                f"ddc: the {self.n_clusters} curriculum stages need at least {need} of the {self.total_steps} "
                f"planned steps (more while the loss keeps improving), so the cleanest noise levels are trained "
                f"late or never; lower {knob} so the stages end well before the budget",
                UserWarning,
                stacklevel=4,  # the caller of the sampler's constructor (past the on_cpu wrapper)
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

    # -- drawing ------------------------------------------------------------------------------------
    def _shares(self, batch_size: int, k: int) -> list[int]:
        base, r = divmod(batch_size, k)
        counts = [base] * k
        off = (self.step * r) % k
        for j in range(r):
            counts[(off + j) % k] += 1
        return counts

    def _draw(self, batch_size, generator):
        device = "cpu"  # every draw on the CPU, whatever the default device (the trainer copies it over)
        cont = self.kind == "continuous"
        if self.phase == "joint":
            return self.joint._draw(batch_size, generator)
        act = self.active_clusters()
        if not self.per_cluster_share or len(act) == 1:
            lo, hi = self.stage_range()
            if self.kind == "flow":
                u = torch.rand(batch_size, generator=generator, dtype=torch.float64, device=device)
                return self.process.clamp(lo + u * (hi - lo)).float(), None
            if not cont:
                return torch.randint(lo, hi, (batch_size,), generator=generator, device=device), None
            f64 = dict(dtype=torch.float64, device=device)
            lo_t, hi_t = torch.full((batch_size,), lo, **f64), torch.full((batch_size,), hi, **f64)
            return _clusters.truncated_lognormal(self.P_mean, self.P_std, lo_t, hi_t, generator), None
        counts = torch.tensor(self._shares(batch_size, len(act)), device=device)
        bounds = torch.tensor([self.intervals[i] for i in act], dtype=torch.float64, device=device)
        lo = bounds[:, 0].repeat_interleave(counts)
        hi = bounds[:, 1].repeat_interleave(counts)
        if self.kind == "flow":
            u = torch.rand(batch_size, generator=generator, dtype=torch.float64, device=device)
            t = self.process.clamp(lo + u * (hi - lo)).float()
        elif not cont:
            u = torch.rand(batch_size, generator=generator, dtype=torch.float64, device=device)
            t = lo + torch.floor(u * (hi - lo))
            t = torch.minimum(t, hi - 1).long()
        else:
            t = _clusters.truncated_lognormal(self.P_mean, self.P_std, lo, hi, generator)
        perm = torch.randperm(batch_size, generator=generator, device=device)
        return t[perm], None

    # -- pacing -------------------------------------------------------------------------------------
    def _observe(self, t: Tensor, per_sample_loss: Tensor) -> None:
        if self.phase == "joint":
            self.joint.observe(t, per_sample_loss)
            return
        if self.pacing == "fixed":  # counts steps: no loss to read
            self._count_step(None)
            return
        mean = per_sample_loss.detach().float().mean().reshape(1)
        for host, drawn_in, world in self._lagged_observations(mean, (self.phase, self.stage)):
            x = float(host[0]) / world  # the mean over the ranks
            # a step drawn in a stage that has ended since tells nothing about the current one; a non-finite
            # loss (a step the trainer zeroes) tells nothing at all
            if drawn_in == (self.phase, self.stage) and math.isfinite(x):
                self._count_step(x)

    def _count_step(self, x: float | None) -> None:
        """One step of the current stage with watched loss ``x`` (``None`` for fixed pacing): advance the stage
        when the pacing rule or the cap says so."""
        self.stage_steps += 1
        if self.pacing == "fixed":
            end = "fixed" if self.stage_steps >= self.steps_per_stage else None
        else:
            end = self._converged(x) if self.pacing == "adaptive" else self._patience_ran_out(x)
        if (
            end is None
            and self.max_steps_per_stage is not None
            and self.stage_steps >= self.max_steps_per_stage
        ):
            end = "cap"
        if end is not None:
            self._advance(end)

    def set_group(self, group) -> None:
        super().set_group(group)
        self.joint.set_group(group)

    def _converged(self, x: float) -> str | None:
        """Adaptive pacing: at the end of each window, "converged" when the median loss of the latest window
        improved on the previous window's by less than ``rel_tol`` (relative)."""
        self.window_losses.append(x)
        if len(self.window_losses) < self.window:
            return None
        m = statistics.median(self.window_losses)
        prev, self.prev_median, self.window_losses = self.prev_median, m, []
        if prev is None:
            return None
        # prev <= 0 only for a non-positive loss: nothing left to improve, call it converged
        return "converged" if prev <= 0 or (prev - m) / prev < self.rel_tol else None

    def _patience_ran_out(self, x: float) -> str | None:
        """Patience pacing: τ steps without a new best of the (optionally smoothed) loss."""
        if self.loss_ema > 0:
            x = x if self.stage_steps == 1 else self.loss_ema * self.ema + (1 - self.loss_ema) * x
            self.ema = x
        if x < self.best - self.min_delta:
            self.best, self.wait = x, 0
        else:
            self.wait += 1
        return "patience" if self.wait >= self.patience else None

    def _advance(self, why: str) -> None:
        if self.stage < self.n_clusters:
            self.stage += 1
        else:
            self.phase = "joint"
        self.last_end = why
        self.converged_stages += why == "converged"
        self.capped_stages += why == "cap"
        self.best, self.wait, self.stage_steps, self.ema = math.inf, 0, 0, 0.0
        self.window_losses, self.prev_median = [], None

    # -- state --------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"phase": self.phase, "stage": self.stage, "stages": self.n_clusters}
        if self.phase == "joint":
            out.update({f"joint_{k}": v for k, v in self.joint.status().items()})
        elif self.pacing == "patience":
            out["wait"] = self.wait
        else:
            out["stage_steps"] = self.stage_steps
        if self.last_end:
            out["ended"] = self.last_end
        if self.pacing == "adaptive":
            out["converged"], out["capped"] = self.converged_stages, self.capped_stages
        return out

    def _state(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "stage": self.stage,
            "stages": self.n_clusters,
            "clustering": self.clustering,
            "order": self.order,
            "pacing": self.pacing,
            "best": self.best,
            "wait": self.wait,
            "stage_steps": self.stage_steps,
            "ema": self.ema,
            "window_losses": list(self.window_losses),
            "prev_median": self.prev_median,
            "last_end": self.last_end,
            "converged_stages": self.converged_stages,
            "capped_stages": self.capped_stages,
            "joint": self.joint.state_dict(),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        for key, mine in (
            ("stages", self.n_clusters),
            ("clustering", self.clustering),
            ("order", self.order),
            ("pacing", self.pacing),
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
        # states written before adaptive pacing and ``joint`` existed lack these keys
        self.window_losses = [float(v) for v in state.get("window_losses", [])]
        prev = state.get("prev_median")
        self.prev_median = None if prev is None else float(prev)
        self.last_end = str(state.get("last_end", ""))
        self.converged_stages = int(state.get("converged_stages", 0))
        self.capped_stages = int(state.get("capped_stages", 0))
        if "joint" in state:
            self.joint.load_state_dict(state["joint"])

    def __repr__(self) -> str:
        return (
            f"DDC(process={self.process!r}, clusters={self.n_clusters}, clustering={self.clustering!r}, "
            f"pacing={self.pacing!r}, order={self.order!r}, joint={self.joint.name!r}, stage={self.stage}, "
            f"phase={self.phase!r}, step={self.step})"
        )
