"""Side-by-side runs of several strategies and the speed-up each one buys (docs/methods.md, "Measuring a speed-up").

Every (method, seed) pair is its own run directory, trained by ``diffusion-curriculum train`` in a subprocess,
up to ``--jobs`` at a time. Runs are resumable: a finished run (its ``summary.json`` reports the requested steps)
is reused, an unfinished one continues from its newest checkpoint. Then the curves are read back and the table
and plots written.

Speed-up of method M: (steps the uniform baseline needs to reach its own final quality at budget
B) ÷ (steps M needs to reach that same quality), quality interpolated linearly in log-space between evaluations;
a method that never reaches it is reported as "not reached", never as a number. Each seed of M is compared
with the same seed of the baseline; the table gives the mean and spread over seeds.

A method is ``part[+part...]`` where a part is ``NAME[:key=value,...]`` and NAME is a preset (``digits-ddc``),
a sampler (``ddc:clustering=snr``), a loss weighting (``min-snr:gamma=5``) or ``mdlrc`` (momentum decay,
``mdlrc:beta1_end=0.6``); e.g. ``clts+mdlrc``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config, launchers, runlog, sweep, timesteps, viz, weighting
from .checks import atomic_write
from .errors import ConfigError, suggest
from .training import build_components

#: quality keys in order of preference (lower is better for all of them)
QUALITY_KEYS = ("fd", "fid", "swd", "mmd", "eval_loss")
#: quality keys where higher is better (a class-conditional run's ``accuracy``): shown as a column of their own
#: (the final value per method), not used for the speed-up
EXTRA_QUALITY_KEYS = ("accuracy",)
MOMENTUM_NAMES = ("mdlrc", "momentum")


@dataclass
class Method:
    """One strategy to compare: a label, the preset it starts from (or None: the shared one) and overrides."""

    label: str
    preset: str | None = None
    overrides: list[str] = field(default_factory=list)


def split_methods(text: str) -> list[str]:
    """Split ``--methods``: commas separate methods, but a ``key=value`` item with no ``:`` continues the
    parameters of the method before it, so ``uniform,ddc:clustering=snr,patience=100,clts`` is three methods."""
    out: list[str] = []
    for tok in (t.strip() for t in text.split(",")):
        if not tok:
            continue
        if "=" in tok and ":" not in tok and "+" not in tok and out:
            out[-1] += "," + tok
        else:
            out.append(tok)
    if not out:
        raise ConfigError(
            f"--methods {text!r} names no method; give a comma-separated list such as uniform,ddc,clts+mdlrc"
        )
    return out


def parse_method(spec: str) -> Method:
    """Parse ``part[+part...]``; raise :class:`ConfigError` naming an unknown part."""
    spec = spec.strip()
    if not spec:
        raise ConfigError("--methods holds an empty method name")
    method = Method(label=spec)
    presets = config.preset_names()
    for part in spec.split("+"):
        name, _, params = part.partition(":")
        name = name.strip()
        kv = [p.strip() for p in params.split(",") if p.strip()] if params else []
        for item in kv:
            if "=" not in item:
                raise ConfigError(f"method {spec!r}: {item!r} must look like key=value")
        if name in presets:
            if method.preset is not None:
                raise ConfigError(f"method {spec!r} names two presets")
            method.preset = name
            method.overrides += kv
        elif name in timesteps.REGISTRY:
            method.overrides += [f"sampler.name={name}"] + [f"sampler.{x}" for x in kv]
        elif name in weighting.REGISTRY:
            method.overrides += [f"weighting.name={name}"] + [f"weighting.{x}" for x in kv]
        elif name in MOMENTUM_NAMES:
            method.overrides += ["momentum.enabled=true"] + [f"momentum.{x}" for x in kv]
        else:
            known = presets + timesteps.names() + sorted(weighting.REGISTRY) + ["mdlrc"]
            raise ConfigError(
                f"method part {name!r} in {spec!r} is not a preset, sampler, weighting or 'mdlrc'"
                f"{suggest(name, known)}; known: {', '.join(known)}"
            )
    return method


def run_dir_name(label: str) -> str:
    """A file-system-safe directory name for a method label."""
    return re.sub(r"[^A-Za-z0-9._+=-]+", "_", label).strip("_") or "method"


# -- speed-up --------------------------------------------------------------------------------------------
def steps_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """First step at which a lower-is-better quality curve reaches ``target``, interpolating log(quality)
    linearly in step between evaluations; ``None`` if it never does. ``curve`` is [(step, quality)], sorted."""
    prev = None
    for step, q in curve:
        if not (isinstance(q, (int, float)) and math.isfinite(q) and q > 0):
            prev = None
            continue
        if q <= target:
            if prev is None:
                return float(step)
            s0, q0 = prev
            l0, l1, lt = math.log(q0), math.log(q), math.log(target)
            frac = 1.0 if l1 == l0 else (l0 - lt) / (l0 - l1)
            return s0 + frac * (step - s0)
        prev = (step, q)
    return None


def speedup(baseline: list[tuple[int, float]], method: list[tuple[int, float]]) -> dict[str, Any]:
    """Speed-up of ``method`` over ``baseline`` (docs/methods.md, "Measuring a speed-up"). Returns the baseline's final quality (the
    target), the steps each needs to reach it, and the ratio — or "not reached", or "one evaluation" when either
    curve has fewer than two points (a ratio of steps cannot be measured from one point)."""
    if not baseline:
        return {"target": None, "baseline_steps": None, "method_steps": None, "speedup": "no baseline"}
    target = baseline[-1][1]
    if len(baseline) < 2 or len(method) < 2:
        return {"target": target, "baseline_steps": None, "method_steps": None, "speedup": "one evaluation"}
    b = steps_to_reach(baseline, target)
    m = steps_to_reach(method, target)
    out: dict[str, Any] = {"target": target, "baseline_steps": b, "method_steps": m}
    out["speedup"] = "not reached" if (m is None or not b) else b / max(m, 1e-12)
    return out


# -- runs ------------------------------------------------------------------------------------------------
def mean_speedup(per_seed: list) -> float | str | None:
    """The mean of per-seed :func:`speedup` values when every seed has a number; else the reason none can be
    given: "no baseline" when a seed's baseline run has no evaluations, "one evaluation" when a seed had too few
    evaluations to measure one (its runs say nothing about reaching), else "not reached"; ``None`` for no seeds."""
    if not per_seed:
        return None
    if all(isinstance(u, float) for u in per_seed):
        return statistics.fmean(per_seed)
    return next((why for why in ("no baseline", "one evaluation") if why in per_seed), "not reached")


def quality_curve(records: list[dict], key: str) -> list[tuple[int, float]]:
    """[(step, value)] of the evaluation records that hold ``key``, sorted by step: one value per step, the first
    logged (the run's own evaluation; a later record of the same step is a re-evaluation, see
    :func:`repeated_steps`)."""
    first: dict[int, float] = {}
    for r in records:
        if isinstance(r.get(key), (int, float)):
            first.setdefault(r["step"], float(r[key]))
    return sorted(first.items())


def repeated_steps(records: list[dict], key: str) -> list[int]:
    """The steps evaluated more than once for ``key`` (of which :func:`quality_curve` keeps the first)."""
    steps = [r["step"] for r in records if isinstance(r.get(key), (int, float))]
    return sorted({s for s in steps if steps.count(s) > 1})


def pick_quality_key(records: list[dict], wanted: str = "auto") -> str:
    """The quality key to compare runs on: ``wanted``, or with ``auto`` the first of QUALITY_KEYS any record has (``eval_loss`` as a last resort)."""
    if wanted in EXTRA_QUALITY_KEYS:
        raise ConfigError(
            f"--metric {wanted} is higher-is-better and is shown as its own column; measure the speed-up on a "
            f"lower-is-better key ({', '.join(QUALITY_KEYS)})"
        )
    if wanted != "auto":
        return wanted
    for k in QUALITY_KEYS:
        if any(isinstance(r.get(k), (int, float)) for r in records):
            return k
    return "eval_loss"


def compare(
    methods: list[str],
    *,
    out: str | Path,
    seeds: int = 3,
    steps: int | None = None,
    preset: str | None = None,
    config_file: str | None = None,
    overrides: list[str] = (),
    jobs: int | None = None,
    metric: str = "auto",
    baseline: str = "uniform",
    eval_samples: int | None = None,
    threads: int | None = None,
    launcher: launchers.Launcher | None = None,
    summarize_only: bool = False,
    progress_every: float = 30.0,
    log=None,
) -> dict[str, Any] | None:
    """Run every method × seed (resumably), then write ``results.csv``, ``results.json`` and plots into ``out``.

    The runs are trained by :func:`diffusion_curriculum.sweep.run` through ``launcher`` (default: ``train``
    subprocesses on this machine with ``threads`` CPU threads each, see :mod:`diffusion_curriculum.launchers`),
    with a progress line per run every ``progress_every`` seconds. With ``summarize_only`` nothing is trained:
    the tables are built from what is on disk, and each run that is missing or unfinished is named (and
    marked in the results with an ``error``). A launcher that does not wait for its jobs (``slurm`` with
    ``wait=False``) returns ``None`` once they are submitted: summarize later with ``summarize_only``.

    With ``eval_samples`` N the quality curves come from an offline evaluation of every kept checkpoint with N
    samples (:func:`diffusion_curriculum.evaluate.evaluate_run`, reused while newer than the run's newest
    checkpoint) instead of the runs' own periodic evaluations, and the outputs are named ``results-nN.*``."""
    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds} is invalid; allowed: a positive integer")
    parsed = [parse_method(m) for m in methods]
    labels = [m.label for m in parsed]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--methods lists a method twice: {', '.join(labels)}")
    if baseline not in labels:
        parsed.insert(0, parse_method(baseline))
    out = Path(out)
    plans, seed_of = _plan_runs(parsed, out, seeds, preset, config_file, list(overrides), steps)
    if summarize_only:
        errors = on_disk(plans)
        done = len(plans) - len(errors)
        say(f"compare --summarize-only: {done} of {len(plans)} runs finished")
        for label, err in errors.items():
            say(f"  {label}: {err}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        launcher = launcher or launchers.Processes(threads)
        errors = sweep.run(
            plans,
            jobs=jobs,
            say=say,
            header=lambda total, done, n_jobs: (
                f"compare: {total} runs ({done} already finished), {n_jobs} at a time"
                + ("" if launcher.name == "processes" else f" ({launcher.name} jobs)")
            ),
            launcher=launcher,
            folder=out / "jobs",
            progress_every=progress_every,
        )
        if not launcher.waits:
            return None
    failures = {seed_of[label]: err for label, err in errors.items()}
    return summarize(
        out,
        [m.label for m in parsed],
        seeds,
        metric=metric,
        baseline=baseline,
        failures=failures,
        eval_samples=eval_samples,
        log=say,
    )


def on_disk(plans: list[sweep.RunPlan]) -> dict[str, str]:
    """``{label: what is wrong}`` for each planned run that is not finished on disk: "missing" (no run
    directory, or one without a run), or "unfinished (step N of M)" with N the newest checkpoint's step."""
    out = {}
    for p in plans:
        if runlog.finished(p.run_dir, p.steps):
            continue
        step = runlog.newest_checkpoint_step(p.run_dir)
        logged = [r["step"] for r in runlog.read_metrics(p.run_dir / "metrics.jsonl")]
        if step is not None:
            out[p.label] = f"unfinished (checkpoint at step {step} of {p.steps})"
        elif logged:
            out[p.label] = f"unfinished (logged up to step {max(logged)} of {p.steps}, no checkpoint yet)"
        else:
            out[p.label] = "missing (not trained yet)"
    return out


def _plan_runs(
    parsed: list[Method],
    out: Path,
    seeds: int,
    preset: str | None,
    config_file: str | None,
    overrides: list[str],
    steps: int | None,
) -> tuple[list[sweep.RunPlan], dict[str, tuple[str, int]]]:
    """One :class:`~diffusion_curriculum.sweep.RunPlan` per method × seed, and each plan's (method, seed).

    Every configuration is resolved and its components built here, so a bad method or override fails before
    any run starts."""
    shared = overrides + ([f"steps={steps}"] if steps else [])
    plans, seed_of = [], {}
    for m in parsed:
        # a method's own preset wins over the shared --config / --preset
        src_preset, src_file = (
            (m.preset or preset, None) if m.preset or not config_file else (None, config_file)
        )
        cfg = config.resolve(src_preset, src_file, shared + m.overrides)
        build_components(cfg)  # checks the named sections' parameters too
        for seed in range(seeds):
            label = f"{m.label} seed {seed}"
            run_overrides = (*shared, *m.overrides, f"seed={cfg['seed'] + seed}", "progress=false")
            run = out / "runs" / run_dir_name(m.label) / f"seed{seed}"
            named = any(o.split("=", 1)[0].strip() == "device" for o in run_overrides)
            device = None if named else cfg["device"]  # a device the command line names is kept
            plans.append(sweep.RunPlan(label, run, cfg["steps"], src_preset, src_file, run_overrides, device))
            seed_of[label] = (m.label, seed)
    return plans, seed_of


def _offline_records(run: Path, samples: int, say) -> list[dict]:
    """The run's offline evaluation with ``samples`` samples, computed now unless a file newer than its newest
    checkpoint exists."""
    from . import checkpoint, evaluate

    path = run / evaluate.eval_file_name(samples)
    ckpts = checkpoint.list_checkpoints(run / "checkpoints")
    if not ckpts:
        return []
    if not path.is_file() or path.stat().st_mtime < ckpts[0].stat().st_mtime:
        say(f"evaluating {run} with {samples} samples")
        evaluate.evaluate_run(run, samples=samples, log=lambda m: None)
    return runlog.read_metrics(path)


def summarize(
    out: Path,
    labels: list[str],
    seeds: int,
    *,
    metric: str = "auto",
    baseline: str = "uniform",
    failures: dict | None = None,
    eval_samples: int | None = None,
    log=None,
) -> dict[str, Any]:
    """Read every run's metrics and write the results table and plots (from the offline evaluation with
    ``eval_samples`` samples when given: see :func:`compare`)."""
    failures = failures or {}
    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    runs = {(lab, s): out / "runs" / run_dir_name(lab) / f"seed{s}" for lab in labels for s in range(seeds)}
    records = {k: runlog.read_metrics(run / "metrics.jsonl") for k, run in runs.items()}
    quality = records
    suffix = ""
    if eval_samples is not None:
        quality = {k: _offline_records(run, eval_samples, say) for k, run in runs.items()}
        suffix = f"-n{eval_samples}"
    key = pick_quality_key([r for recs in quality.values() for r in recs], metric)
    for (lab, s), recs in quality.items():
        again = repeated_steps(recs, key)
        if again:
            say(
                f"note: {lab} seed {s} has several {key} records at step {', '.join(map(str, again))}; the first is used"
            )
    results: dict[str, Any] = {"metric": key, "baseline": baseline, "seeds": seeds, "methods": {}}
    if eval_samples is not None:
        results["eval_samples"] = eval_samples
    for lab in labels:
        per_seed = []
        for s in range(seeds):
            curve = quality_curve(quality[(lab, s)], key)
            base = quality_curve(quality[(baseline, s)], key)
            summ = runlog.read_summary(runs[(lab, s)])
            entry = {
                "seed": s,
                "final": curve[-1][1] if curve else None,
                "final_step": curve[-1][0] if curve else None,
                "steps_per_s": summ.get("steps_per_s"),
                **speedup(base, curve),
            }
            if (lab, s) in failures:
                entry["error"] = failures[(lab, s)]
            per_seed.append(entry)
        finals = [e["final"] for e in per_seed if e["final"] is not None]
        ups = [e["speedup"] for e in per_seed]
        numeric = [u for u in ups if isinstance(u, float)]
        sps = [e["steps_per_s"] for e in per_seed if e["steps_per_s"]]
        results["methods"][lab] = {
            "final_mean": statistics.fmean(finals) if finals else None,
            "final_std": statistics.stdev(finals) if len(finals) > 1 else 0.0 if finals else None,
            "speedup_mean": mean_speedup(ups),
            "speedup_per_seed": ups,
            "reached": f"{len(numeric)}/{len(ups)}",
            "steps_per_s": statistics.fmean(sps) if sps else None,
            "per_seed": per_seed,
        }
        for extra in EXTRA_QUALITY_KEYS:  # e.g. a conditional run's accuracy: its final value per seed
            last = [c[-1][1] for c in (quality_curve(quality[(lab, s)], extra) for s in range(seeds)) if c]
            if last:
                results["methods"][lab][f"{extra}_mean"] = statistics.fmean(last)
                results["methods"][lab][f"{extra}_std"] = statistics.stdev(last) if len(last) > 1 else 0.0
    atomic_write(out / f"results{suffix}.json", json.dumps(results, indent=2))
    _write_csv(out / f"results{suffix}.csv", results)
    curves = {lab: [dict(quality_curve(quality[(lab, s)], key)) for s in range(seeds)] for lab in labels}
    viz.quality_plot(out / f"quality{suffix}.png", curves, key)
    hists = {lab: [r for s in range(seeds) for r in records[(lab, s)] if "t_hist" in r] for lab in labels}
    viz.drawn_levels_plot(out / "timesteps.png", hists)
    return results


def _fmt(v, digits=4):
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return "" if v is None else str(v)


def _write_csv(path: Path, results: dict) -> None:
    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(
        [
            "method",
            f"final_{results['metric']}_mean",
            f"final_{results['metric']}_std",
            "speedup_mean",
            "speedup_per_seed",
            "reached",
            "machine_steps_per_s",  # throughput of the machine the run shared, not a cost (THROUGHPUT_NOTE)
            *(f"final_{k}_{m}" for k in _extra_keys(results) for m in ("mean", "std")),
        ]
    )
    for lab, r in results["methods"].items():
        w.writerow(
            [
                lab,
                _fmt(r["final_mean"]),
                _fmt(r["final_std"]),
                _fmt(r["speedup_mean"], 3),
                " ".join(
                    _fmt(u, 3) if isinstance(u, float) else str(u).replace(" ", "_")
                    for u in r["speedup_per_seed"]
                ),
                r["reached"],
                _fmt(r["steps_per_s"], 3),
                *(_fmt(r.get(f"{k}_{m}")) for k in _extra_keys(results) for m in ("mean", "std")),
            ]
        )
    atomic_write(path, f.getvalue())


def _extra_keys(results: dict) -> list[str]:
    """The :data:`EXTRA_QUALITY_KEYS` some method of ``results`` has a final value of."""
    return [k for k in EXTRA_QUALITY_KEYS if any(f"{k}_mean" in r for r in results["methods"].values())]


#: what the steps/s column measures, printed under the table
THROUGHPUT_NOTE = (
    "† machine steps/s: each run's wall-clock training throughput on the machine it ran on, while it shared "
    "that machine with the other runs of this comparison; it measures the machine and the load on it, not "
    "what the method costs (compare costs with one run at a time, e.g. benchmarks/sampler_overhead.py)."
)


def _spread(mean: float, std: float, n: int, digits: int) -> str:
    """``mean ± std``, or ``mean (one seed)``: a single seed has no spread to show (``± 0`` would claim one)."""
    return f"{mean:.{digits}g} (one seed)" if n == 1 else f"{mean:.{digits}g} ± {std:.2g}"


def format_table(results: dict) -> str:
    """A Markdown table of the results (what BENCHMARKS.md shows), with :data:`THROUGHPUT_NOTE` under it."""
    k = results["metric"]
    extra = _extra_keys(results)
    rows = [
        f"| method | final {k} (mean ± std) | speed-up vs {results['baseline']} (mean) | per seed "
        "| machine steps/s † |" + "".join(f" final {e} (mean ± std) |" for e in extra),
        "|---|---|---|---|---|" + "---|" * len(extra),
    ]
    for lab, r in results["methods"].items():
        n = (
            sum(e.get("final") is not None for e in r.get("per_seed", [])) or 2
        )  # tables from before: a spread
        fm = "failed" if r["final_mean"] is None else _spread(r["final_mean"], r["final_std"], n, 4)
        sp = r["speedup_mean"]
        sp = f"{sp:.2f}×" if isinstance(sp, float) else str(sp)
        per = ", ".join(f"{u:.2f}" if isinstance(u, float) else str(u) for u in r["speedup_per_seed"])
        more = "".join(
            f" {_spread(r[f'{e}_mean'], r[f'{e}_std'], n, 3)} |" if f"{e}_mean" in r else " |" for e in extra
        )
        rows.append(
            f"| {lab} | {fm} | {sp} ({r['reached']} reached) | {per} | {_fmt(r['steps_per_s'], 3)} |{more}"
        )
    return "\n".join(rows) + "\n\n" + THROUGHPUT_NOTE
