"""Convergence speed of the denoising task per noise-level interval.

Kim et al. 2024, "Denoising Task Difficulty-based Curriculum for Training Diffusion Models" (arXiv 2403.10348),
§3 (observational study): split the timesteps into N intervals, train on each and compare how fast the loss
converges; they find the small-t (low-noise) intervals converge more slowly — the harder tasks (docs/methods.md,
"Analyses", convergence per interval).

Two modes:

- ``per-interval``: N models, model k trained only on t ∈ [⌊kT/N⌋, ⌊(k+1)T/N⌋) (the ``interval`` sampler),
  same steps each, trained by :func:`diffusion_curriculum.sweep.run` (parallel ``diffusion-curriculum train``
  subprocesses, or one after another in-process with one job); loss curves come from each run's ``metrics.jsonl``.
- ``per-bucket``: one model trained on all t (the config's own sampler) in-process; the per-sample losses the
  trainer passes to ``sampler.observe`` are accumulated per t-bucket (same N equal-width buckets; ln σ buckets
  for an EDM process) and logged every ``log_every`` steps, by a trainer hook (:class:`BucketLossRecorder`).

Convergence measure (definition used here; the paper reports "steps to converge" without a formula, so this is
the project's documented choice): a loss curve is the list of logged (step, loss) pairs. Its initial loss L_0 is
the first logged value; its final loss L_f is the mean of the last ``final_window`` logged values (default 3,
to damp the logging noise); the drop is Δ = L_0 − L_f. The steps to reach fraction f of the drop is the first
step at which the curve is ≤ L_0 − f·Δ, interpolated linearly in step between the two logged points around the
crossing (the first logged point counts as the start: a curve that is already there at its first point gives that
step). ``None`` when Δ ≤ 0 or the level is never reached.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .. import noise_levels
from ..errors import ConfigError
from ..training.hooks import Hook
from . import write_table

FRACTIONS = (0.9, 0.95, 0.99)


def steps_to_fraction(
    curve: list[tuple[float, float]], fractions=FRACTIONS, final_window: int = 3
) -> dict[str, Any]:
    """Steps to reach each fraction of a loss curve's total drop (definition in the module docstring).

    Returns ``{"initial", "final", "drop", "steps_90", "steps_95", "steps_99"}`` (keys follow ``fractions``)."""
    pts = [(float(s), float(v)) for s, v in curve if isinstance(v, (int, float)) and math.isfinite(v)]
    keys = [f"steps_{round(f * 100):d}" for f in fractions]
    if not pts:
        return {"initial": None, "final": None, "drop": None, **dict.fromkeys(keys)}
    l0 = pts[0][1]
    tail = pts[-max(1, final_window) :]
    lf = sum(v for _, v in tail) / len(tail)
    drop = l0 - lf
    res: dict[str, Any] = {"initial": l0, "final": lf, "drop": drop}
    for f, key in zip(fractions, keys):
        res[key] = None
        if drop <= 0:
            continue
        level = l0 - f * drop
        prev = None
        for s, v in pts:
            if v <= level:
                if prev is None:
                    res[key] = s
                else:
                    s0, v0 = prev
                    res[key] = s0 + (v0 - level) / (v0 - v) * (s - s0)
                break
            prev = (s, v)
    return res


def interval_bounds(T: int, n: int) -> list[tuple[int, int]]:
    """[⌊kT/n⌋, ⌊(k+1)T/n⌋) for k = 0 … n−1 (interval 0 = the cleanest)."""
    if not 1 <= n <= T:
        raise ConfigError(f"--intervals {n} is invalid; allowed: an integer in [1, {T}]")
    return [(k * T // n, (k + 1) * T // n) for k in range(n)]


def _loss_curve(records: list[dict]) -> list[tuple[int, float]]:
    return [(r["step"], float(r["loss"])) for r in records if isinstance(r.get("loss"), (int, float))]


# -- per-interval -----------------------------------------------------------------------------------------
#: overrides every analysis training run gets before the user's own (no periodic evaluation, no feature nets)
QUIET = ["eval_every=0", "metrics.enabled=false", "progress=false"]


def per_interval(
    cfg: dict,
    out: Path,
    *,
    intervals: int,
    preset: str | None,
    config_file: str | None,
    overrides: list[str],
    jobs: int | None,
    final_window: int,
    say,
) -> tuple[list[dict], dict[str, list]]:
    """Mode ``per-interval``: one model per t interval, trained for the same steps in parallel ``train`` subprocesses; returns (table rows, curves)."""
    from .. import config, runlog, sweep
    from ..training import build_components

    proc = build_components(cfg).process
    if proc.continuous:
        raise ConfigError(
            "analyze difficulty --mode per-interval needs a discrete process; use --mode per-bucket"
        )
    bounds = interval_bounds(proc.T, intervals)
    plans = []
    for k, (lo, hi) in enumerate(bounds):
        ov = [*QUIET, *overrides, "sampler.name=interval", f"sampler.lo={lo}", f"sampler.hi={hi}"]
        config.resolve(preset, config_file, ov)  # fail before any run starts
        label = f"interval{k}"
        plans.append(sweep.RunPlan(label, out / "runs" / label, cfg["steps"], preset, config_file, tuple(ov)))
    failures = sweep.run(plans, jobs=jobs, say=say, serial_in_process=True)
    rows, curves = [], {}
    for plan, (lo, hi) in zip(plans, bounds):
        label = plan.label
        curve = _loss_curve(runlog.read_metrics(plan.run_dir / "metrics.jsonl"))
        curves[label] = curve
        row = {
            "interval": label,
            "t_lo": lo,
            "t_hi": hi,
            **steps_to_fraction(curve, final_window=final_window),
        }
        if label in failures:
            row["error"] = failures[label]
        rows.append(row)
    return rows, curves


# -- per-bucket -------------------------------------------------------------------------------------------
class BucketLossRecorder(Hook):
    """A trainer hook that accumulates the per-sample losses of every step per noise-level bucket and emits
    one mean per bucket every ``every`` steps (counted by the sampler's own step counter)."""

    def __init__(self, process, buckets: int, every: int):
        self.process, self.buckets, self.every = process, buckets, every
        self.sum = torch.zeros(buckets, dtype=torch.float64)
        self.count = torch.zeros(buckets, dtype=torch.float64)
        self.curves: list[tuple[int, list[float | None]]] = []

    def bucket(self, t):
        """Bucket index in [0, buckets) of each t (:func:`diffusion_curriculum.noise_levels.bucket`: equal t
        ranges for a discrete process, equal ranges of ln σ for EDM)."""
        return noise_levels.bucket(self.process, t, self.buckets)

    def on_step(self, trainer, t, per_sample) -> None:
        """Accumulate the step's per-sample losses into their buckets; every ``every`` steps, emit the means."""
        b = self.bucket(t.detach().cpu())
        loss = per_sample.detach().double().cpu()
        self.sum.index_add_(0, b, loss)
        self.count.index_add_(0, b, torch.ones_like(loss))
        step = trainer.sampler.step
        if step % self.every == 0:
            means = [float(s / c) if c > 0 else None for s, c in zip(self.sum.tolist(), self.count.tolist())]
            self.curves.append((step, means))
            self.sum.zero_()
            self.count.zero_()


def per_bucket(
    cfg: dict, out: Path, *, intervals: int, final_window: int, say
) -> tuple[list[dict], dict[str, list]]:
    """Mode ``per-bucket``: one model trained on all t, its per-sample losses averaged per t-bucket every ``log_every`` steps; returns (table rows, curves)."""
    from ..training import Trainer

    trainer = Trainer(cfg, out / "run", log=say)  # refuses a folder that already holds a run
    rec = BucketLossRecorder(trainer.process, intervals, cfg["log_every"])
    trainer.hooks.append(rec)
    trainer.run()
    p = trainer.process
    edges, unit = noise_levels.bucket_edges(p, intervals)
    rows, curves = [], {}
    for k in range(intervals):
        label = f"bucket{k}"
        curve = [(s, m[k]) for s, m in rec.curves if m[k] is not None]
        curves[label] = curve
        if unit == "ln sigma":
            span = {"ln_sigma_lo": edges[k], "ln_sigma_hi": edges[k + 1]}
        elif p.continuous:  # a flow process: buckets of t in (0, 1)
            span = {"t_lo": edges[k], "t_hi": edges[k + 1]}
        else:
            span = {"t_lo": k * p.T // intervals, "t_hi": (k + 1) * p.T // intervals}
        rows.append({"interval": label, **span, **steps_to_fraction(curve, final_window=final_window)})
    return rows, curves


# -- plot and entry point ---------------------------------------------------------------------------------
def plot(rows: list[dict], curves: dict[str, list], path: Path, mode: str) -> None:
    """Loss curves coloured by interval (left, each normalised to its own initial loss) and steps to 90/95/99 %
    of the drop per interval (right)."""
    import numpy as np

    from .. import viz

    plt, fig, ax = viz.figure(1, 2, size=(12.0, 4.4))
    a, b = ax[0, 0], ax[0, 1]
    cmap = plt.get_cmap("viridis")
    n = len(rows)
    for k, r in enumerate(rows):
        c = curves.get(r["interval"]) or []
        if not c:
            continue
        s = [p[0] for p in c]
        v = np.array([p[1] for p in c]) / c[0][1]
        lab = f"t∈[{r['t_lo']},{r['t_hi']})" if "t_lo" in r else r["interval"]
        a.plot(s, v, color=cmap(k / max(1, n - 1)), label=lab)
    a.set_yscale("log")
    a.set_xlabel("step")
    a.set_ylabel("loss / initial loss")
    a.set_title(f"loss per interval ({mode})")
    a.legend(fontsize=6, ncol=2)
    width = 0.27
    x = np.arange(n)
    for j, key in enumerate(("steps_90", "steps_95", "steps_99")):
        vals = [r.get(key) if r.get(key) is not None else np.nan for r in rows]
        b.bar(x + (j - 1) * width, vals, width, label=key.replace("steps_", "") + " % of drop")
    b.set_xticks(x, [r["interval"].replace("interval", "").replace("bucket", "") for r in rows])
    b.set_xlabel("interval (0 = smallest t, cleanest)")
    b.set_ylabel("steps to reach")
    b.legend(fontsize=7)
    viz.save_figure(plt, fig, path)


def run(
    cfg: dict,
    out: str | Path,
    *,
    mode: str = "per-interval",
    intervals: int = 10,
    preset: str | None = None,
    config_file: str | None = None,
    overrides: list[str] = (),
    jobs: int | None = None,
    final_window: int = 3,
    log=None,
) -> dict[str, Any]:
    """Run the analysis and write ``difficulty.csv``, ``difficulty.json``, ``difficulty.png`` into ``out``.

    ``cfg`` is the resolved config (for per-bucket it is trained as is, with the :data:`QUIET` settings applied
    by the caller if wanted); per-interval re-resolves ``preset``/``config_file``/``overrides`` per run."""
    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    out = Path(out)
    if intervals < 1:
        raise ConfigError(f"--intervals {intervals} is invalid; allowed: a positive integer")
    if final_window < 1:
        raise ConfigError(f"--final-window {final_window} is invalid; allowed: a positive integer")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if mode == "per-interval":
        rows, curves = per_interval(
            cfg,
            out,
            intervals=intervals,
            preset=preset,
            config_file=config_file,
            overrides=list(overrides),
            jobs=jobs,
            final_window=final_window,
            say=say,
        )
    elif mode == "per-bucket":
        rows, curves = per_bucket(cfg, out, intervals=intervals, final_window=final_window, say=say)
    else:
        raise ConfigError(f"--mode {mode!r} is not known; allowed: per-interval, per-bucket")
    meta = {
        "analysis": "difficulty",
        "mode": mode,
        "intervals": intervals,
        "steps": cfg["steps"],
        "final_window": final_window,
        "fractions": list(FRACTIONS),
        "curves": {k: [list(p) for p in v] for k, v in curves.items()},
        "time_s": time.time() - t0,
    }
    write_table(out, "difficulty", rows, meta)
    plot(rows, curves, out / "difficulty.png", mode)
    return {**meta, "rows": rows}
