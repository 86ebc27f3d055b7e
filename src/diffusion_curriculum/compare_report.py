"""The tables and files of a comparison (:mod:`diffusion_curriculum.compare`): the results table and CSV, the paired
statistics against the baseline and ``--against`` (:mod:`diffusion_curriculum.paired`) and the metric's noise
(:mod:`diffusion_curriculum.fd_noise`)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from . import fd_noise, paired
from .checks import atomic_write


def _fmt(v, digits=4):
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return "" if v is None else str(v)


def write_csv(path: Path, results: dict) -> None:
    """``results.csv``: one row per method of the results table (the paired statistics are in the JSON)."""
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
    """The :data:`~diffusion_curriculum.compare.EXTRA_QUALITY_KEYS` some method of ``results`` has a final value
    of."""
    from .compare import EXTRA_QUALITY_KEYS

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
        fm = _why_none(r) if r["final_mean"] is None else _spread(r["final_mean"], r["final_std"], n, 4)
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


def format_report(results: dict) -> str:
    """What ``compare`` prints: :func:`format_table`, then one paired table (:func:`~diffusion_curriculum.paired.
    format_paired_table`) per reference of ``results["paired"]`` (the baseline, and ``--against``), then the
    metric's noise (:func:`~diffusion_curriculum.fd_noise.noise_line`)."""
    key = results["metric"]
    shown = key.upper() if key in fd_noise.SAMPLE_KEYS else key
    parts = [format_table(results)]
    for ref, comparisons in results.get("paired", {}).items():
        if comparisons:
            parts.append(f"Paired against {ref}:\n\n" + paired.format_paired_table(comparisons, ref, shown))
    if key in fd_noise.SAMPLE_KEYS:
        why = "not measured: " + results.get("fd_noise_why", "a table from before the measurement")
        parts.append(fd_noise.noise_line(results.get("fd_noise"), key, why))
    else:
        parts.append(
            fd_noise.noise_line(None, "fd", f"the runs have no sample-based metric; compared on {key}")
        )
    return "\n\n".join(parts)


def _why_none(r: dict) -> str:
    """What a method without a final value shows: ``missing`` / ``unfinished`` (no run on disk, or one not yet
    done: ``--summarize-only`` before training ends), else ``failed``."""
    errors = " ".join(str(e.get("error", "")) for e in r.get("per_seed", []))
    if "missing" in errors:
        return "missing"
    if "unfinished" in errors or "not finished" in errors:
        return "unfinished"
    return "failed"
