"""What the fixed per-noise-level validation loss costs an evaluation: its time against the rest of the evaluation
(sampling ``eval.samples`` and the quality metrics), in one process, alternating, on untrained weights (the cost
does not depend on them), plus the one-off optimal-loss computation.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/val_cost.py [--rounds 3]

Settings: the digits preset (8x8, 1000 samples, DDIM-50) and benchmarks/configs/mnist5k-cpu.yaml (28x28, 1000
samples, DDIM-20). Prints a markdown row per setting: median seconds of the validation loss, of the rest of the
evaluation, their ratio, and the optimal loss's one-off seconds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from diffusion_curriculum import config, optimal_loss, validation
from diffusion_curriculum.train import Trainer

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {
    "digits": dict(preset="digits", config_path=None),
    "mnist5k-cpu": dict(preset=None, config_path=str(ROOT / "benchmarks" / "configs" / "mnist5k-cpu.yaml")),
}


def measure(name: str, rounds: int) -> dict:
    s = SETTINGS[name]
    cfg = config.resolve(s["preset"], s["config_path"], ["progress=false"])
    with tempfile.TemporaryDirectory() as out:
        tr = Trainer(cfg, out)
        tr.model.eval()
        t0 = time.perf_counter()
        vset = validation.build(
            tr.dataset,
            tr.process,
            buckets=cfg["eval"]["val_buckets"],
            per_bucket=cfg["eval"]["val_per_bucket"],
            seed=0,
        )
        optimal_loss.floor(tr.process, cfg["prediction"], tr.dataset.data, vset)
        floor_s = time.perf_counter() - t0
        # the first call builds the set and computes the floor, as a run's first evaluation does: not timed
        tr.validator(tr.ema)
        val, rest = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            tr.validator(tr.ema)
            val.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            samples = tr.generate()
            for hook in tr.hooks:
                if hasattr(hook, "on_eval"):
                    hook.on_eval(tr, samples, 0)
            rest.append(time.perf_counter() - t0)
    v, r = statistics.median(val), statistics.median(rest)
    return {"setting": name, "val_s": v, "rest_s": r, "share": v / r, "floor_s": floor_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| setting | validation loss, s | rest of the evaluation, s | share | optimal loss (once), s |")
    print("|---|---|---|---|---|")
    for name in args.settings.split(","):
        m = measure(name, args.rounds)
        print(
            f"| {m['setting']} | {m['val_s']:.3f} | {m['rest_s']:.2f} | {100 * m['share']:.2f} % | {m['floor_s']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
