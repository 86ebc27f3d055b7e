"""Reference runs: short, fixed trainings whose every logged number proves that a change of structure kept the
behaviour (bit-identical metrics), or shows exactly which runs a change of behaviour moved.

Each run trains the digits model for a few hundred steps with one strategy (a few also conditional, on the flow
and on the EDM process) and records every line of its ``metrics.jsonl`` (losses at each log step, the final
evaluation's FD). Run it on the code before and after a change and compare:

    PYTHONPATH=/path/to/old/src python benchmarks/reference_runs.py --out /tmp/ref-old
    PYTHONPATH=src python benchmarks/reference_runs.py --out /tmp/ref-new
    python benchmarks/reference_runs.py --compare /tmp/ref-old/reference.json /tmp/ref-new/reference.json

One thread, about 4 minutes on a 2-core CPU. ``--only NAME,...`` trains a subset.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

#: name -> (preset, overrides): short runs of every kind of strategy the trainer drives
RUNS: dict[str, tuple[str, list[str]]] = {
    "uniform": ("digits", []),
    "ddc": ("digits", ["sampler.name=ddc", "sampler.clusters=5"]),
    "loss-second-moment": ("digits", ["sampler.name=loss-second-moment"]),
    "learning-progress": ("digits", ["sampler.name=learning-progress"]),
    "clts": ("digits", ["sampler.name=clts"]),
    "speed": ("digits", ["sampler.name=speed"]),
    "lognormal+edm2-uncertainty": ("digits", ["sampler.name=lognormal", "weighting.name=edm2-uncertainty"]),
    "cond": ("digits-cond", []),
    "flow-lsm": ("digits-flow", ["sampler.name=loss-second-moment"]),
    "edm-ddc": ("digits", ["process.name=edm", "eval.method=heun", "eval.steps=10", "sampler.name=ddc"]),
}

#: what every reference run shares: short, evaluated once at the end with a small FD
COMMON = [
    "steps=240",
    "log_every=20",
    "eval_every=0",
    "checkpoint_every=0",
    "eval.samples=200",
    "progress=false",
]


def run_all(out: Path, only: list[str] | None) -> dict:
    from diffusion_curriculum import config
    from diffusion_curriculum.training.trainer import train

    results = {}
    for name, (preset, overrides) in RUNS.items():
        if only and name not in only:
            continue
        cfg = config.resolve(preset, overrides=[*COMMON, *overrides])
        run_dir = out / name
        train(cfg, run_dir)
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        keep = ("step", "loss", "fd", "eval_loss", "skipped", "sampler", "accuracy", "t_hist")
        results[name] = [{k: v for k, v in json.loads(line).items() if k in keep} for line in lines]
        print(f"{name}: {results[name][-1]}", flush=True)
    return results


def compare(a_path: str, b_path: str) -> int:
    a, b = (json.loads(Path(p).read_text()) for p in (a_path, b_path))
    differ = 0
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            print(f"{name}: only in {'the first' if name in a else 'the second'}")
            continue
        if a[name] == b[name]:
            print(f"{name}: identical ({len(a[name])} records)")
            continue
        differ += 1
        first = next(
            (i for i, (x, y) in enumerate(zip(a[name], b[name])) if x != y), min(len(a[name]), len(b[name]))
        )
        fa, fb = a[name][-1], b[name][-1]
        print(
            f"{name}: DIFFERS from record {first}; final {fa.get('fd')} -> {fb.get('fd')} (fd), "
            f"loss {a[name][-2].get('loss') if len(a[name]) > 1 else None} -> "
            f"{b[name][-2].get('loss') if len(b[name]) > 1 else None}"
        )
    return 1 if differ else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="folder for the runs and reference.json")
    p.add_argument("--only", help="comma-separated run names (default: all)")
    p.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), help="compare two reference.json files")
    args = p.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    if not args.out:
        p.error("--out is required unless --compare is given")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    results = run_all(out, args.only.split(",") if args.only else None)
    (out / "reference.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out / 'reference.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
