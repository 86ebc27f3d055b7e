"""Side-by-side runs of several strategies and the speed-up each one buys (docs/methods.md, "Measuring a speed-up").

Every (method, seed) pair is its own run directory, trained by ``diffusion-curriculum train`` in a subprocess,
up to ``--jobs`` at a time. Runs are resumable: a finished run (its ``summary.json`` reports the requested steps)
is reused, an unfinished one continues from its newest checkpoint. Then the curves are read back and the table
and plots written.

Speed-up of method M: (steps the uniform baseline needs to reach its own final quality at budget
B) ÷ (steps M needs to reach that same quality), quality interpolated linearly in log-space between evaluations;
a method that never reaches it is reported as "not reached", never as a number. Each seed of M is compared
with the same seed of the baseline; the table gives the mean and spread over seeds. Since the speed-up at the
final quality is measured where all curves are flat, a second table (:mod:`diffusion_curriculum.paired`) pairs
seed s of every method with seed s of the baseline (and of ``--against``) at four targets, the baseline's
quality at 25/50/75/100 % of its budget, with 95 % intervals over seeds and a verdict, and the line under it
gives the metric's own noise (:mod:`diffusion_curriculum.fd_noise`).

A method is ``part[+part...]`` where a part is ``NAME[:key=value,...]`` and NAME is a preset (``digits-ddc``),
a sampler (``ddc:clustering=snr``), a loss weighting (``min-snr:gamma=5``) or ``mdlrc`` (momentum decay,
``mdlrc:beta1_end=0.6``); e.g. ``clts+mdlrc``.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import compare_report, config, launchers, noise, paired, runlog, sweep, timesteps, viz, weighting
from . import fd_noise as fd_noise_mod
from .checks import atomic_write
from .compare_report import THROUGHPUT_NOTE, format_report, format_table  # noqa: F401 (their home before)
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


def say_line(msg: str) -> None:
    """``msg`` and its newline on stderr in one write: the progress thread and the run launcher speak at once,
    and ``print`` writes the text and the newline separately, so two lines could run together."""
    sys.stderr.write(f"{msg}\n")
    sys.stderr.flush()


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
        elif name in noise.REGISTRY:
            method.overrides += [f"noise.name={name}"] + [f"noise.{x}" for x in kv]
        else:
            known = presets + timesteps.names() + sorted(weighting.REGISTRY) + noise.names() + ["mdlrc"]
            raise ConfigError(
                f"method part {name!r} in {spec!r} is not a preset, sampler, weighting, noise or 'mdlrc'"
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
    against: str | None = None,
    eval_samples: int | None = None,
    fd_noise: bool = True,
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
    checkpoint) instead of the runs' own periodic evaluations, and the outputs are named ``results-nN.*``.

    Every method is also compared seed by seed with ``baseline`` and ``against`` (trained too when not among
    ``methods``), and with ``fd_noise`` the baseline's final checkpoints are scored once more with a second
    sample seed (one evaluation per seed, for a sample-based key): see :func:`summarize`."""
    say = log or say_line
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds} is invalid; allowed: a positive integer")
    parsed = _methods_and_references(methods, baseline, against)
    out = Path(out)
    plans, seed_of = _plan_runs(parsed, out, seeds, preset, config_file, list(overrides), steps)
    if summarize_only:
        errors = on_disk(plans)
        done = len(plans) - len(errors)
        say(f"compare --summarize-only: {done} of {len(plans)} runs finished")
        for label, err in errors.items():
            say(f"  {label}: {err}")
        if not done:
            raise ConfigError(
                f"no run of this comparison is finished under {str(out)!r}, so there is nothing to summarize; train "
                "them with the same command without --summarize-only, or wait for their jobs"
            )
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
        against=against,
        failures=failures,
        eval_samples=eval_samples,
        fd_noise=fd_noise,
        log=say,
    )


def _methods_and_references(methods: list[str], baseline: str, against: str | None) -> list[Method]:
    """The parsed ``methods``, after the references (``against``, then ``baseline``) that are not among them:
    those are trained too, first. A method listed twice, or ``against`` equal to ``baseline``, is a
    :class:`ConfigError`."""
    parsed = [parse_method(m) for m in methods]
    labels = [m.label for m in parsed]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--methods lists a method twice: {', '.join(labels)}")
    if against is not None and against == baseline:
        raise ConfigError(
            f"--against {against} is the baseline already; name another method, or leave it out"
        )
    for ref in (against, baseline):
        if ref is not None and ref not in labels:
            parsed.insert(0, parse_method(ref))
    return parsed


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
    checkpoint exists; a run without checkpoints (e.g. one rebuilt from committed result files) keeps its file."""
    from . import checkpoint, evaluate

    path = run / evaluate.eval_file_name(samples)
    ckpts = checkpoint.list_checkpoints(run / "checkpoints")
    if not ckpts:
        return runlog.read_metrics(path)
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
    against: str | None = None,
    failures: dict | None = None,
    eval_samples: int | None = None,
    fd_noise: bool = True,
    log=None,
) -> dict[str, Any]:
    """Read every run's metrics and write the results table and plots (from the offline evaluation with
    ``eval_samples`` samples when given: see :func:`compare`).

    The results add ``paired``: per reference (``baseline``, and ``against`` when given) and method the
    :func:`diffusion_curriculum.paired.paired_comparison` of its seeds against the reference's (step ratios at
    the reference's quality at 25/50/75/100 % of its budget, final-quality and final ``val_loss`` differences);
    and, with ``fd_noise`` and a sample-based quality key, ``fd_noise``: the :func:`~diffusion_curriculum.
    fd_noise.summary` of the baseline's final checkpoints scored with a second sample seed."""
    failures = failures or {}
    say = log or say_line
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
    curves = {lab: {s: quality_curve(quality[(lab, s)], key) for s in range(seeds)} for lab in labels}
    for lab in labels:
        results["methods"][lab] = _method_results(lab, curves, baseline, quality, runs, failures, seeds)
    refs = [baseline] + ([against] if against else [])
    results["paired"] = {ref: _paired_against(ref, labels, curves, records, key) for ref in refs}
    if key in fd_noise_mod.SAMPLE_KEYS:
        results["fd_noise"] = _noise(runs, curves, baseline, key, eval_samples, say) if fd_noise else None
        if results["fd_noise"] is None:
            results["fd_noise_why"] = (
                "the baseline's runs have no checkpoint to score again" if fd_noise else "--no-fd-noise"
            )
    atomic_write(out / f"results{suffix}.json", json.dumps(results, indent=2))
    compare_report.write_csv(out / f"results{suffix}.csv", results)
    per_seed_curves = {lab: [dict(curves[lab][s]) for s in range(seeds)] for lab in labels}
    viz.quality_plot(out / f"quality{suffix}.png", per_seed_curves, key)
    hists = {lab: [r for s in range(seeds) for r in records[(lab, s)] if "t_hist" in r] for lab in labels}
    viz.drawn_levels_plot(out / "timesteps.png", hists)
    return results


def _noise(runs, curves, baseline, key, eval_samples, say) -> dict | None:
    """:func:`diffusion_curriculum.fd_noise.summary` of the baseline's seeds that have a curve and a
    checkpoint, each scored once more with a second sample seed (``None`` when none has)."""
    found = [
        fd_noise_mod.measure(runs[(baseline, s)], key, curve, eval_samples, say)
        for s, curve in curves[baseline].items()
        if curve and runlog.newest_checkpoint_step(runs[(baseline, s)]) is not None
    ]
    return fd_noise_mod.summary(found)


def _method_results(lab, curves, baseline, quality, runs, failures, seeds) -> dict[str, Any]:
    """One method's entry of the results: per seed its final quality, throughput and :func:`speedup`, and
    their means over seeds (and the final value of each :data:`EXTRA_QUALITY_KEYS` a run logs)."""
    per_seed = []
    for s in range(seeds):
        curve, base = curves[lab][s], curves[baseline][s]
        entry = {
            "seed": s,
            "final": curve[-1][1] if curve else None,
            "final_step": curve[-1][0] if curve else None,
            "steps_per_s": runlog.read_summary(runs[(lab, s)]).get("steps_per_s"),
            **speedup(base, curve),
        }
        if (lab, s) in failures:
            entry["error"] = failures[(lab, s)]
        per_seed.append(entry)
    finals = [e["final"] for e in per_seed if e["final"] is not None]
    ups = [e["speedup"] for e in per_seed]
    numeric = [u for u in ups if isinstance(u, float)]
    sps = [e["steps_per_s"] for e in per_seed if e["steps_per_s"]]
    res = {
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
            res[f"{extra}_mean"] = statistics.fmean(last)
            res[f"{extra}_std"] = statistics.stdev(last) if len(last) > 1 else 0.0
    return res


#: logged values whose final value is compared seed by seed (lower is better), besides the quality key
PAIRED_FINAL_KEYS = ("val_loss",)


def final_values(records: list[dict], key: str) -> float | None:
    """The last numeric value of ``key`` in ``records`` (``None`` when none has one)."""
    vals = [r[key] for r in records if isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)]
    return float(vals[-1]) if vals else None


def _paired_against(ref: str, labels: list[str], curves: dict, records: dict, key: str) -> dict[str, dict]:
    """``{method: paired_comparison}`` of every method but ``ref`` against ``ref``: step ratios on the quality
    curves, differences of the final quality and of each :data:`PAIRED_FINAL_KEYS` the runs log."""

    def finals(lab: str, k: str) -> dict[int, float]:
        if k == key:
            return {s: c[-1][1] for s, c in curves[lab].items() if c}
        vals = {s: final_values(records[(lab, s)], k) for s in curves[lab]}
        return {s: v for s, v in vals.items() if v is not None}

    out = {}
    for lab in (m for m in labels if m != ref):
        both = {k: (finals(ref, k), finals(lab, k)) for k in (key, *PAIRED_FINAL_KEYS)}
        out[lab] = paired.paired_comparison(curves[ref], curves[lab], both)
    return out
