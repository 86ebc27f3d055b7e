"""Paired statistics of a comparison: seed s of every method against seed s of a reference method.

Seed s of every method of a ``compare`` starts from the same initial weights and walks the same data order and
noise (the model is built right after ``torch.manual_seed(seed)``, the batches, noise and label drops come from
streams of their own derived from the seed, and a sampler draws only from its own timestep stream: see
:mod:`diffusion_curriculum.training`), so the per-seed differences between two methods cancel the seed's share of
the variation, and the statistics here are taken over those per-seed differences.

* **Targets.** For a reference curve with budget B (its last evaluated step), the targets are its quality at
  25 %, 50 %, 75 % and 100 % of B (:data:`FRACTIONS`), interpolated log-linearly in step between evaluations
  (:func:`quality_at`, the interpolation of :func:`diffusion_curriculum.compare.steps_to_reach`).
* **Step ratio** of a seed at a target: steps the reference needs to reach it ÷ steps the method needs (both by
  :func:`~diffusion_curriculum.compare.steps_to_reach`); > 1 is faster. At 100 % it is the speed-up of
  :func:`~diffusion_curriculum.compare.speedup`. A method that never reaches a target is "n.r." on that seed;
  one already there at its first evaluation counts as reaching it there (nothing earlier is measured), so a
  target at the reference's first evaluation cannot show a ratio above 1. Only seeds whose two curves have at
  least two evaluations are paired.
* **Mean and 95 % interval over seeds** (:func:`summarize_values`): for the ratios, the geometric mean with the
  Student-t interval of the mean of the log ratios, exponentiated — a ratio is multiplicative (2× and 0.5× are
  equally far from 1), so its logarithm is the scale on which a symmetric, normal-theory interval fits and the
  interval can never reach below 0; for differences of final values, the arithmetic mean with the t interval
  of the differences. Both are the one-sample t interval mean ± t_{0.975, n-1} · s / √n (Student 1908; e.g.
  Casella & Berger, *Statistical Inference*, 2nd ed., ch. 9), given for n ≥ 3 paired seeds. With 2 seeds no
  interval is given: the exact t interval has t_{0.975, 1} = 12.71 and decides nothing, and a percentile
  bootstrap (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13) over 2 seeds spans only the
  two values, between which the median of a continuous distribution (the mean of a symmetric one) lies with
  probability 1 − 2 · (1/2)² = 1/2: a "95 %" interval that covers half of the time.
  A seed that is "n.r." leaves the target without a mean or interval (its ratio is unknown, and leaving the seed
  out would bias the mean towards the seeds that reached), and the cell names the seeds that did not reach.
* **Verdict**: "ahead" / "behind" only where the interval excludes no change (a ratio of 1, a difference of
  0), "level" where it includes it, "–" where there is no interval.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

#: the shares of the reference's budget whose quality is a target
FRACTIONS = (0.25, 0.5, 0.75, 1.0)
#: the fewest paired seeds an interval is given for (see the module docstring)
MIN_SEEDS = 3
#: t_{0.975, df} for df = 1..30 (two-sided 95 %), from the Student-t CDF (regularized incomplete beta) to 8
#: digits; they agree with Abramowitz & Stegun (1964), Table 26.10
_T975 = (
    12.706205,
    4.3026527,
    3.1824463,
    2.7764451,
    2.5705818,
    2.4469119,
    2.3646243,
    2.3060041,
    2.2621572,
    2.2281389,
    2.2009852,
    2.1788128,
    2.1603687,
    2.1447867,
    2.1314495,
    2.1199053,
    2.1098156,
    2.100922,
    2.0930241,
    2.0859634,
    2.0796138,
    2.0738731,
    2.0686576,
    2.0638986,
    2.0595386,
    2.0555294,
    2.0518305,
    2.0484071,
    2.0452296,
    2.0422725,
)
_Z975 = 1.959963984540054


def t_quantile(df: int) -> float:
    """t_{0.975, df}, the two-sided 95 % quantile of Student's t with ``df`` degrees of freedom: the table
    :data:`_T975` for df ≤ 30, beyond it the Cornish–Fisher expansion around the normal quantile z
    (Abramowitz & Stegun 1964, 26.7.5, four terms; off by < 3e-6 at df = 30 and less beyond)."""
    if df < 1:
        raise ValueError(f"df={df} is invalid; a t quantile needs at least 1 degree of freedom")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def t_interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width) of the 95 % one-sample t interval: mean ± t_{0.975, n-1} · s / √n (s the sample
    standard deviation; Casella & Berger, §9.2.2). Needs at least 2 values."""
    if len(values) < 2:
        raise ValueError(f"a t interval needs at least 2 values, got {len(values)}")
    n = len(values)
    return statistics.fmean(values), t_quantile(n - 1) * statistics.stdev(values) / math.sqrt(n)


def verdict(low: float | None, high: float | None, no_change: float, higher_is_better: bool) -> str:
    """ "ahead" / "behind" where the interval [low, high] excludes ``no_change``, "level" where it includes
    it, "–" without an interval."""
    if low is None or high is None:
        return "–"
    if low <= no_change <= high:
        return "level"
    above = low > no_change
    return "ahead" if above == higher_is_better else "behind"


def summarize_values(per_seed: dict[int, Any], *, ratio: bool, higher_is_better: bool) -> dict[str, Any]:
    """Mean, 95 % interval and verdict of paired per-seed values (see the module docstring): ``ratio`` True
    takes the geometric mean and the interval of the log values (no change: 1), else the arithmetic mean and
    the interval of the values (no change: 0). A value that is not a number ("n.r.") leaves no mean: the
    result names those seeds in ``not_reached``."""
    out: dict[str, Any] = {"n": len(per_seed), "per_seed": dict(per_seed), "mean": None}
    out.update(low=None, high=None, not_reached=[s for s, v in per_seed.items() if not _number(v)])
    if not per_seed or out["not_reached"]:
        out["verdict"] = "–"
        return out
    values = [math.log(v) if ratio else v for v in per_seed.values()]
    back = math.exp if ratio else (lambda x: x)
    mean = statistics.fmean(values)
    out["mean"] = back(mean)
    if len(values) >= MIN_SEEDS:
        _, half = t_interval(values)
        out["low"], out["high"] = back(mean - half), back(mean + half)
    out["verdict"] = verdict(out["low"], out["high"], 1.0 if ratio else 0.0, higher_is_better)
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# -- targets and step ratios --------------------------------------------------------------------------------
def quality_at(curve: list[tuple[int, float]], step: float) -> float | None:
    """A lower-is-better quality curve's value at ``step``, interpolating log(quality) linearly in step between
    evaluations (as :func:`~diffusion_curriculum.compare.steps_to_reach` does); ``None`` outside the evaluated
    steps or next to a value that is not positive and finite."""
    exact = dict(curve).get(step)
    if exact is not None:  # an evaluated step: its own value, not one interpolated to it
        return exact if _number(exact) and exact > 0 else None
    for (s0, q0), (s1, q1) in zip(curve, curve[1:]):
        if s0 <= step <= s1:
            if not all(_number(q) and q > 0 for q in (q0, q1)):
                return None
            frac = (step - s0) / (s1 - s0)
            return math.exp(math.log(q0) + frac * (math.log(q1) - math.log(q0)))
    return None


def targets(curve: list[tuple[int, float]], fractions: Iterable[float] = FRACTIONS) -> dict[float, tuple]:
    """``{fraction: (step, quality)}``: the curve's quality at each ``fraction`` of its budget (its last
    evaluated step), by :func:`quality_at`; a fraction before the first evaluation is left out."""
    if not curve:
        return {}
    budget = curve[-1][0]
    out = {}
    for f in fractions:
        q = quality_at(curve, f * budget)
        if q is not None:
            out[f] = (f * budget, q)
    return out


def step_ratios(
    reference: list[tuple[int, float]], curve: list[tuple[int, float]], fractions: Iterable[float] = FRACTIONS
) -> dict[float, float | str]:
    """``{fraction: ratio}`` of one seed: steps ``reference`` needs to reach its own quality at that fraction of
    its budget ÷ steps ``curve`` needs to reach it, or "n.r." where ``curve`` never does (see the module
    docstring). A fraction the reference has no target at is left out."""
    from .compare import steps_to_reach

    out: dict[float, float | str] = {}
    for f, (_, q) in targets(reference, fractions).items():
        ref_steps, steps = steps_to_reach(reference, q), steps_to_reach(curve, q)
        if not ref_steps:  # a reference that does not reach its own value (or is there at step 0): no ratio
            continue
        out[f] = "n.r." if steps is None else ref_steps / max(steps, 1e-12)
    return out


# -- one method against the reference -------------------------------------------------------------------
def paired_comparison(
    reference: dict[int, list[tuple[int, float]]],
    method: dict[int, list[tuple[int, float]]],
    finals: dict[str, tuple[dict[int, float], dict[int, float]]] | None = None,
    fractions: Iterable[float] = FRACTIONS,
) -> dict[str, Any]:
    """The paired statistics of ``method`` against ``reference`` (each ``{seed: [(step, quality)]}``): the
    seeds both evaluated at least twice (``seeds``), the :func:`summarize_values` of the step ratios at each
    target (``ratios``, by fraction of the budget, with each target's step in ``target_steps``), and of the
    differences method − reference of each ``finals[key] = ({seed: reference's final value}, {seed: method's})``
    over the seeds both have (``diffs``; lower is better for all of them). A key without a shared seed is
    left out."""
    fractions = tuple(fractions)
    seeds = sorted(s for s in set(reference) & set(method) if len(reference[s]) > 1 and len(method[s]) > 1)
    per_fraction: dict[float, dict[int, Any]] = {f: {} for f in fractions}
    target_steps: dict[float, float] = {}
    for s in seeds:
        for f, r in step_ratios(reference[s], method[s], fractions).items():
            per_fraction[f][s] = r
        for f, (step, _) in targets(reference[s], fractions).items():
            target_steps.setdefault(f, step)
    out: dict[str, Any] = {"seeds": seeds, "target_steps": target_steps}
    out["ratios"] = {
        f: summarize_values(v, ratio=True, higher_is_better=True) for f, v in per_fraction.items() if v
    }
    out["diffs"] = {}
    for key, (ref_final, m_final) in (finals or {}).items():
        diff = {s: m_final[s] - ref_final[s] for s in sorted(set(ref_final) & set(m_final))}
        if diff:
            out["diffs"][key] = summarize_values(diff, ratio=False, higher_is_better=False)
    return out


# -- the table ------------------------------------------------------------------------------------------
def _seeds_text(seeds: list[int]) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def format_cell(summary: dict[str, Any] | None, *, ratio: bool) -> str:
    """One cell: ``1.32× [1.05, 1.66] ahead`` (ratio) or ``-0.21 [-0.40, -0.02] ahead`` (difference); with
    fewer than :data:`MIN_SEEDS` seeds the mean and "(1 seed)" / "(2 seeds, no interval)"; "n.r. (seed …)"
    naming the seeds that never reached; "–" for no pair."""
    if not summary or not summary["n"]:
        return "–"
    if summary["not_reached"]:
        return f"n.r. ({_seeds_text(summary['not_reached'])} of {summary['n']}) –"
    num = (lambda v: f"{v:.2f}") if ratio else (lambda v: f"{v:+.3g}")
    mean = num(summary["mean"]) + ("×" if ratio else "")
    if summary["low"] is None:
        n = summary["n"]
        return f"{mean} (1 seed)" if n == 1 else f"{mean} ({n} seeds, no interval)"
    return f"{mean} [{num(summary['low'])}, {num(summary['high'])}] {summary['verdict']}"


def paired_note(reference: str, key: str) -> str:
    """What the columns of :func:`format_paired_table` mean, printed under it."""
    return (
        f"Paired: seed s of each method against seed s of `{reference}` (same initial weights, data order and "
        f"noise). Step ratio at p %: steps `{reference}` needs to reach its own {key} at p % of its budget ÷ "
        "steps the method needs (log-linear interpolation between evaluations; > 1 is faster; a method already "
        "there at its first evaluation counts as reaching it there, so a target at the first evaluation "
        "cannot show more than 1), geometric mean "
        "over seeds [95 % Student-t interval of the log ratios]. Final differences: method − "
        f"`{reference}`, mean [95 % t interval]. ahead / behind: the interval excludes no change (1×, 0); "
        f"level: it includes it; –: no interval (fewer than {MIN_SEEDS} paired seeds, or n.r.: a seed that "
        "never reached that target)."
    )


def format_paired_table(comparisons: dict[str, dict], reference: str, key: str = "FD") -> str:
    """A markdown table of :func:`paired_comparison` results (``{method: result}``) against ``reference``,
    with :func:`paired_note` under it: per method the paired seeds, the step ratio at each target and the
    difference of each final value."""
    fractions = sorted({f for c in comparisons.values() for f in c["ratios"]})
    diff_keys = list(dict.fromkeys(k for c in comparisons.values() for k in c["diffs"]))
    steps = {f: s for c in comparisons.values() for f, s in c["target_steps"].items()}
    head = ["method", "paired seeds"]
    head += [f"steps ratio at {f * 100:g} % ({key}@{steps[f]:g})" for f in fractions]
    head += [f"final {key if k.lower() == key.lower() else k} − {reference}" for k in diff_keys]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lab, c in comparisons.items():
        cells = [f"`{lab}`", ", ".join(map(str, c["seeds"])) or "none"]
        cells += [format_cell(c["ratios"].get(f), ratio=True) for f in fractions]
        cells += [format_cell(c["diffs"].get(k), ratio=False) for k in diff_keys]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n\n" + paired_note(reference, key)
