"""Host memory per rank of a data-parallel run: the peak resident memory of each process after the trainer is set
up and after a few steps, on an npz dataset of CIFAR-10's size (random uint8 images, written once).

    python benchmarks/host_memory.py --out host_memory.json              # 2 gloo processes on the CPU
    python benchmarks/host_memory.py --out m.json --images 50000 --procs 2 -- model.channels=8

It starts ``torchrun --nproc_per_node PROCS`` on itself; each rank builds the trainer of the ``digits`` preset
with ``dataset.name=npz`` on the file (a small UNet: the figure is about the data), trains ``--steps`` steps and
reports its peak resident set (``ru_maxrss``) and the resident set now, after set-up and after the steps. The
JSON record lists the ranks, the dataset's size as uint8 and as float32, and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))


def rss_mb() -> tuple[float, float]:
    """(peak, current) resident memory of this process in MB (Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open("/proc/self/statm") as f:
        now = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return round(peak, 1), round(now, 1)


def rank_main(args) -> int:
    import torch

    from diffusion_curriculum import config
    from diffusion_curriculum.training import Trainer

    torch.set_num_threads(1)
    overrides = [
        "dataset.name=npz",
        f"dataset.path={args.npz}",
        "model.channels=8",
        "model.groups=8",
        "batch_size=32",
        "device=cpu",
        "eval_every=0",
        "checkpoint_every=0",
        "metrics.enabled=false",
        "progress=false",
        f"steps={args.steps}",
        *args.overrides,
    ]
    before = rss_mb()
    t = Trainer(config.resolve("digits", overrides=overrides), args.workdir, log=lambda m: None)
    setup = rss_mb()
    for _ in range(args.steps):
        t.train_step()
    steps = rss_mb()
    rec = {"rank": t.rank, "start": before, "after_setup": setup, "after_steps": steps}
    Path(f"{args.out}.rank{t.rank}").write_text(json.dumps(rec))
    t.close()
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", type=int, default=50000, help="images of 32x32x3 uint8 in the npz (50000)")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rank-main", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--npz", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    if args.rank_main:
        return rank_main(args)
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="host_memory_") as tmp:
        npz = Path(tmp) / "images.npz"
        rng = np.random.default_rng(0)
        np.savez(npz, images=rng.integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8))
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(args.procs),
        ]
        cmd += [
            __file__,
            "--rank-main",
            "--out",
            args.out,
            "--npz",
            str(npz),
            "--workdir",
            str(Path(tmp) / "run"),
        ]
        cmd += ["--steps", str(args.steps), *args.overrides]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
        subprocess.run(cmd, check=True, env=env)
    ranks = []
    for r in range(args.procs):
        part = Path(f"{args.out}.rank{r}")
        ranks.append(json.loads(part.read_text()))
        part.unlink()
    pixels = args.images * 32 * 32 * 3
    record = {
        "images": args.images,
        "uint8_mb": round(pixels / 2**20, 1),
        "float32_mb": round(4 * pixels / 2**20, 1),
        "procs": args.procs,
        "ranks": ranks,
        "note": "MB of resident memory: (peak, current) at the start, after the trainer's set-up, after the steps",
        "command": " ".join(
            ["python", "benchmarks/host_memory.py", *(argv if argv is not None else sys.argv[1:])]
        ),
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
