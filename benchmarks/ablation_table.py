"""Tables of a strategy grid from its small result files, so they can be rebuilt without retraining.

Each run of a ``compare --eval-samples N`` grid keeps ``eval-nN.jsonl`` (FD per checkpoint) in its run
directory. ``--collect`` copies those files (and the run's ``summary.json`` and last sampler status) from one or
more compare output folders into ``benchmarks/results/<name>/<group>/<method>/seed<k>/``; the default action
prints, per group (e.g. the noise schedule), a markdown table: FD mean ± std over the seeds at every checkpoint,
the speed-up per seed (steps the baseline needs to reach its own final FD ÷ steps the method needs; log-linear
interpolation between evaluations, "n.r." when not reached), and how many steps the baseline needs to match the
method's FD at early checkpoints, ÷ those steps (same interpolation, "≤ 1" when the baseline was already as good),
and, for methods with at least two seeds shared with the baseline, the speed-up of the seed-mean curves.
With ``--in-run`` the curves are the runs' own evaluations (the ``fd`` records of ``metrics.jsonl``, for a grid
trained with ``eval_every`` instead of ``--eval-samples``), kept as ``eval-in-run.jsonl``. ``--guidance W`` takes
the files of ``evaluate --guidance W`` of class-conditional runs; ``--key accuracy`` (or any other logged value)
tables that value per checkpoint, without speed-ups unless it is lower-is-better.

Under each table of a lower-is-better value come the paired statistics (:mod:`diffusion_curriculum.paired`):
seed s of every method against seed s of the baseline (and, with ``--against METHOD``, of that method too), the
step ratio at the reference's value at 25/50/75/100 % of its budget and the difference of the final value (and
of the final ``val_loss`` where the files carry it), each with its 95 % t interval over the paired seeds and a
verdict; then the metric's noise, when a measurement of it (``fd-noise-*.json``, written by ``compare`` into
the baseline's runs and copied by ``--collect``) is committed for the group, else that it is unknown.

``--restore GROUP=FOLDER`` is the inverse of ``--collect``: on a fresh machine it rebuilds a group's finished runs
from the committed files, so that running its grid again trains only what is missing.

    python benchmarks/ablation_table.py --collect lin=/work/bench/lin cos=/work/bench/cos --name digits-ablation
    python benchmarks/ablation_table.py --name digits-ablation            # the tables, from the committed files
    python benchmarks/ablation_table.py --collect lin=/work/bench/mnist --name mnist5k --in-run --early 400,800
    python benchmarks/ablation_table.py --name digits-cond --guidance 1.5 --key accuracy --decimals 3
    python benchmarks/ablation_table.py --name digits-ablation --against loss-second-moment
    python benchmarks/ablation_table.py --restore flow=/work/out/flow --name digits-noise-flow
    python benchmarks/ablation_table.py --restore lin=/work/out/new-line --name digits-ablation --only uniform
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from diffusion_curriculum import fd_noise, paired, runlog
from diffusion_curriculum.compare import run_dir_name, speedup, steps_to_reach
from diffusion_curriculum.evaluate import eval_file_name

RESULTS = Path(__file__).resolve().parent / "results"
#: the values whose tables get speed-up columns (the others, such as a conditional run's accuracy, do not)
LOWER_IS_BETTER = ("fd", "fid", "swd", "eval_loss")
#: the keys of an in-run evaluation record kept in eval-in-run.jsonl (not its noise-level histogram)
IN_RUN_KEYS = ("step", "eval_loss", "val_loss", "fd", "fid", "swd", "precision", "recall", "accuracy")


def _eval_file(samples: int | None, guidance: float | None = None) -> str:
    """eval-in-run.jsonl (``samples`` None), else the file ``evaluate --samples N [--guidance W]`` writes."""
    return "eval-in-run.jsonl" if samples is None else eval_file_name(samples, guidance)


def collect(name: str, sources: list[str], samples: int | None, guidance: float | None = None) -> int:
    """Copy each run's evaluation file (``samples`` None: its in-run evaluations, from metrics.jsonl), summary
    and last sampler status; returns the number of runs copied."""
    n = 0
    for item in sources:
        group, _, folder = item.partition("=")
        pattern = "metrics.jsonl" if samples is None else _eval_file(samples, guidance)
        for ev in sorted(Path(folder).glob(f"runs/*/seed*/{pattern}")):
            run = ev.parent
            dest = RESULTS / name / group / run.parent.name / run.name
            dest.mkdir(parents=True, exist_ok=True)
            if samples is None:
                records = [json.loads(x) for x in open(ev) if '"fd"' in x]
                lines = [json.dumps({k: r[k] for k in IN_RUN_KEYS if k in r}) + "\n" for r in records]
                (dest / _eval_file(None)).write_text("".join(lines))
            else:
                shutil.copyfile(ev, dest / ev.name)
            for kept in [run / "summary.json", *run.glob("fd-noise-*.json")]:
                if kept.exists():
                    shutil.copyfile(kept, dest / kept.name)
            # metrics.jsonl is absent where a run was itself collected from committed files: no status then
            status = [r["sampler"] for r in runlog.read_metrics(run / "metrics.jsonl") if "sampler" in r]
            if status:
                (dest / "sampler-status.json").write_text(json.dumps(status[-1]) + "\n")
            n += 1
    return n


def restore(name: str, targets: list[str], methods: list[str] | None = None) -> int:
    """The inverse of :func:`collect`: rebuild each committed run of ``benchmarks/results/<name>/<group>`` (of
    ``methods`` only, when given) as ``FOLDER/runs/<method>/seed<k>/`` for every ``GROUP=FOLDER`` (a run already
    there is left untouched), so a grid run again on a fresh machine trains only what is missing (compare skips a
    run whose ``summary.json`` reports the planned steps). A run kept with its in-run evaluations gets a
    ``metrics.jsonl`` of those records and of its last sampler status, so that compare's own summary and a later
    ``--collect --in-run`` read it like a run trained there (nothing else of its log is kept); the rebuilt runs
    have no checkpoints. Returns the number of runs rebuilt."""
    n = 0
    for item in targets:
        group, _, folder = item.partition("=")
        kept_runs = sorted((RESULTS / name / group).glob("*/seed*"))
        if not folder or not kept_runs:
            raise SystemExit(
                f"--restore {item}: expected GROUP=FOLDER with runs under {RESULTS / name / group}, found none"
            )
        if methods is not None:
            have = sorted({k.parent.name for k in kept_runs})
            wanted = {run_dir_name(m): m for m in methods}
            missing = [m for d, m in wanted.items() if d not in have]
            if missing:
                raise SystemExit(
                    f"--only {','.join(missing)}: no such method under {RESULTS / name / group} "
                    f"(it has {', '.join(have)})"
                )
            kept_runs = [k for k in kept_runs if k.parent.name in wanted]
        for kept in kept_runs:
            dest = Path(folder) / "runs" / kept.parent.name / kept.name
            if dest.exists():
                continue
            part = dest.with_name(dest.name + ".restoring")  # renamed when whole: a crash leaves no half run
            shutil.rmtree(part, ignore_errors=True)
            part.mkdir(parents=True)
            for f in kept.iterdir():
                shutil.copyfile(f, part / f.name)
            log = _restored_log(kept)
            if log:
                (part / "metrics.jsonl").write_text("".join(log))
            part.rename(dest)
            n += 1
    return n


def _restored_log(kept: Path) -> list[str]:
    """The ``metrics.jsonl`` lines of a committed run: its in-run evaluations, then its last sampler status at
    its final step (either may be absent: a run evaluated offline has no in-run evaluations)."""
    evals = kept / _eval_file(None)
    lines = evals.read_text().splitlines(keepends=True) if evals.is_file() else []
    status = kept / "sampler-status.json"
    if status.is_file():
        step = runlog.read_summary(kept).get("steps")
        lines.append(json.dumps({"step": step, "sampler": json.loads(status.read_text())}) + "\n")
    return lines


def load(
    name: str, samples: int | None, key: str = "fd", guidance: float | None = None
) -> dict[str, dict[str, dict[int, list[tuple[int, float]]]]]:
    """group -> method -> seed -> [(step, value of ``key``)]."""
    out: dict = {}
    for ev in sorted((RESULTS / name).glob(f"*/*/seed*/{_eval_file(samples, guidance)}")):
        seed = int(ev.parent.name.removeprefix("seed"))
        method, group = ev.parent.parent.name, ev.parent.parent.parent.name
        curve = sorted((r["step"], float(r[key])) for r in map(json.loads, open(ev)) if key in r)
        out.setdefault(group, {}).setdefault(method, {})[seed] = curve
    return out


def _mean_std(values: list[float], decimals: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{decimals}f}"
    return f"{statistics.mean(values):.{decimals}f} ± {statistics.stdev(values):.{decimals}f}"


def _ratio(v) -> str:
    if isinstance(v, float):
        return f"{v:.2f}"
    return "n.r." if v == "not reached" else str(v)


def _mean_curve(seeds: dict[int, list[tuple[int, float]]], only: set[int]) -> list[tuple[int, float]]:
    """The mean over ``only``'s seeds at every step all of them evaluated."""
    curves = [dict(c) for s, c in seeds.items() if s in only]
    common = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return [(k, statistics.mean(c[k] for c in curves)) for k in common]


def _mean_curve_speedup(base: dict, seeds: dict) -> str:
    """Speed-up of the method's seed-mean curve over the baseline's, both over the seeds they share: steps the
    baseline's mean curve needs to reach its own final value ÷ steps the method's mean curve needs ("–" with
    fewer than two shared seeds)."""
    shared = set(base) & set(seeds)
    if len(shared) < 2:
        return "–"
    b, m = _mean_curve(base, shared), _mean_curve(seeds, shared)
    r = speedup(b, m)
    steps = r["method_steps"]
    where = f" (at {steps:.0f} steps)" if isinstance(steps, float) else ""
    return f"{_ratio(r['speedup'])}{where}"


def table(
    methods: dict, baseline: str, early: tuple[int, ...] | None, key: str = "FD", decimals: int = 2
) -> str:
    """The markdown table of one group (see the module docstring); ``early`` None: the values per checkpoint
    only (a higher-is-better value has no speed-up); ``decimals``: of the values per checkpoint."""
    steps = sorted({s for seeds in methods.values() for c in seeds.values() for s, _ in c})
    head = ["method", "seeds", *[str(s) for s in steps]]
    if early is not None:
        head.append(f"speed-up vs {baseline} (per seed)")
        head += [f"{baseline} steps to match at {k} ÷ {k}" for k in early]
        head.append(f"seed-mean curve: speed-up to {baseline}'s mean final {key}")
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = methods.get(baseline, {})
    order = [baseline] + sorted(m for m in methods if m != baseline) if base else sorted(methods)
    for m in order:
        seeds = methods[m]
        cells = [f"`{m}`", "/".join(str(s) for s in sorted(seeds))]
        for s in steps:
            vals = [v for c in seeds.values() for st, v in c if st == s]
            cells.append(_mean_std(vals, decimals) if vals else "–")
        if early is not None:
            cells += _speedup_cells(base, seeds, early)
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _speedup_cells(base: dict, seeds: dict, early: tuple[int, ...]) -> list[str]:
    """The per-seed speed-up, steps-to-match at each of ``early`` and seed-mean speed-up cells of one row."""
    ups, early_cells = [], {k: [] for k in early}
    for seed, curve in sorted(seeds.items()):
        b = base.get(seed)
        if not b:
            ups.append("no baseline")
            continue
        ups.append(_ratio(speedup(b, curve)["speedup"]))
        for k in early:
            at = dict(curve).get(k)
            if at is None:
                early_cells[k].append("–")
                continue
            need = steps_to_reach(b, at)
            early_cells[k].append("n.r." if need is None else ("≤ 1" if need <= k else f"{need / k:.2f}"))
    return [" / ".join(ups), *(" / ".join(early_cells[k]) for k in early), _mean_curve_speedup(base, seeds)]


def paired_table(
    name: str, group: str, curves: dict, reference: str, key: str, samples: int | None, guidance=None
) -> str:
    """The paired statistics of every method of ``group`` against ``reference`` (see the module docstring), or
    one sentence saying the group has no such method."""
    if reference not in curves:
        return f"No paired table against `{reference}`: the group has no such method."
    val = load(name, samples, "val_loss", guidance).get(group, {})

    def finals(m: str, values: dict) -> dict[int, float]:
        return {s: c[-1][1] for s, c in values.get(m, {}).items() if c}

    comparisons = {}
    for m in sorted(x for x in curves if x != reference):
        both = {key: (finals(reference, curves), finals(m, curves))}
        if val:
            both["val_loss"] = (finals(reference, val), finals(m, val))
        comparisons[m] = paired.paired_comparison(curves[reference], curves[m], both)
    return paired.format_paired_table(comparisons, reference, key.upper())


def noise_text(name: str, group: str, baseline: str, samples: int | None, guidance=None) -> str:
    """The metric's noise line of ``group``: from the committed ``fd-noise`` files of its baseline's seeds,
    or that it is unknown (always for a ``--guidance`` table: compare scores it at the runs' own guidance)."""
    if guidance is not None:
        why = f"compare measures it at the runs' own guidance, not at --guidance {guidance:g}"
        return fd_noise.noise_line(None, "fd", why)
    pattern = f"seed*/{fd_noise.noise_file_name(samples)}"
    found = [json.loads(p.read_text()) for p in sorted((RESULTS / name / group / baseline).glob(pattern))]
    if found:
        return fd_noise.noise_line(fd_noise.summary(found), "fd")
    # none for the baseline (e.g. its checkpoints were not kept): the noise measured on another method's final
    # checkpoints (the same metric at the same sample count) says as much, and the line names where it was measured
    others = sorted((RESULTS / name / group).glob(f"*/{pattern}"))
    why = f"no {fd_noise.noise_file_name(samples)} is committed under {name}/{group}/{baseline}/seed*"
    line = fd_noise.noise_line(fd_noise.summary([json.loads(p.read_text()) for p in others]), "fd", why)
    if others:
        where = ", ".join(dict.fromkeys(f"`{p.parent.parent.name}`" for p in others))
        line += f" Measured on the final checkpoints of {where}; none is committed for `{baseline}`."
    return line


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="digits-ablation", help="the results folder under benchmarks/results")
    ap.add_argument(
        "--collect", nargs="*", metavar="GROUP=FOLDER", help="copy result files from compare folders"
    )
    ap.add_argument(
        "--restore",
        nargs="*",
        metavar="GROUP=FOLDER",
        help="rebuild the committed runs of a group in a compare folder (the inverse of --collect)",
    )
    ap.add_argument(
        "--only",
        metavar="METHOD,...",
        help="with --restore: only these methods (e.g. the baseline of a new line)",
    )
    ap.add_argument("--samples", type=int, default=1000, help="the evaluation's sample count (eval-nN.jsonl)")
    ap.add_argument(
        "--in-run",
        action="store_true",
        help="the runs' own evaluations (metrics.jsonl) instead of eval-nN.jsonl",
    )
    ap.add_argument(
        "--guidance",
        type=float,
        help="the files of `evaluate --guidance W` (eval-nN-wW.jsonl) of conditional runs",
    )
    ap.add_argument(
        "--key",
        default="fd",
        help="the value tabled (default fd); a higher-is-better one such as accuracy gets no speed-up columns",
    )
    ap.add_argument(
        "--decimals", type=int, default=2, help="of the values per checkpoint (e.g. 3 for accuracy)"
    )
    ap.add_argument("--baseline", default="uniform")
    ap.add_argument("--against", metavar="METHOD", help="a second reference for the paired statistics")
    ap.add_argument("--early", default="1000,2000", help="checkpoints for the steps-to-match columns")
    args = ap.parse_args(argv)
    if args.in_run and args.guidance is not None:
        ap.error(
            "--guidance names files of `evaluate --guidance`; the in-run evaluations (--in-run) are at the runs' own guidance"
        )
    if args.only and not args.restore:
        ap.error(
            "--only chooses the methods of --restore; name the groups to restore with --restore GROUP=FOLDER"
        )
    if args.decimals < 0:
        ap.error(f"--decimals {args.decimals} is invalid; allowed: an integer >= 0")
    samples = None if args.in_run else args.samples
    if args.collect:
        n = collect(args.name, args.collect, samples, args.guidance)
        print(f"collected {n} runs into {RESULTS / args.name}")
        return 0
    if args.restore:
        n = restore(args.name, args.restore, args.only.split(",") if args.only else None)
        print(f"restored {n} runs from {RESULTS / args.name}")
        return 0
    if args.against is not None and args.against == args.baseline:
        ap.error(f"--against {args.against} is the baseline already; name another method")
    early = tuple(int(k) for k in args.early.split(",") if k)
    lower = args.key in LOWER_IS_BETTER
    for group, methods in sorted(load(args.name, samples, args.key, args.guidance).items()):
        print(
            f"\n### {group}\n\n{table(methods, args.baseline, early if lower else None, args.key.upper(), args.decimals)}"
        )
        if not lower:
            continue
        for ref in [args.baseline] + ([args.against] if args.against else []):
            text = paired_table(args.name, group, methods, ref, args.key, samples, args.guidance)
            print(f"\nPaired against `{ref}`:\n\n{text}")
        print("\n" + noise_text(args.name, group, args.baseline, samples, args.guidance))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
