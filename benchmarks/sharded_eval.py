"""Evaluation split over processes: the time each rank spends on an evaluation and on its share of the samples,
against one process making them all, and whether the gathered samples are that process's.

    python -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/sharded_eval.py --out sharded.json
    python -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/sharded_eval.py --device cpu \
        --samples 64 --out sharded.json        # the same on the CPU (gloo), as the tests run it

Every rank builds the trainer of ``--preset`` (its weights as initialised: the time and the equality do not
depend on training) and runs one evaluation of ``--samples`` samples in chunks of ``--batch``: each rank makes
its chunks (``eval.seeding: per-chunk``), rank 0 gathers and measures them (FD and the validation loss). Then
rank 0 alone makes all the samples again, as a single process would, and compares. The JSON record has per
rank the evaluation's seconds and the seconds and sample count of its share, the single process's seconds, the
speed-up of the slowest share over it, the largest difference between the two sets of samples (0 on the CPU;
on a GPU the same kernels on the same shapes give 0 too, unless a non-deterministic kernel is chosen), the FD
and the device.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--out", required=True, help="the JSON record (rank 0 writes it; the run goes to OUT.run/)"
    )
    ap.add_argument("--preset", default="digits")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=250, help="eval.batch_size: the chunk size")
    ap.add_argument("--device", default="auto", help="auto (each rank's GPU, else the CPU) or cpu")
    ap.add_argument("overrides", nargs="*", help="more key=value settings")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    import torch
    import torch.distributed as dist

    from diffusion_curriculum import config
    from diffusion_curriculum.training import Trainer

    args = parse_args(argv)
    out = Path(args.out)
    dist.init_process_group("nccl" if args.device != "cpu" and torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    run = out.with_name(out.name + ".run")
    if rank == 0:
        shutil.rmtree(run, ignore_errors=True)
    dist.barrier()
    overrides = [
        f"eval.samples={args.samples}",
        f"eval.batch_size={args.batch}",
        "eval.seeding=per-chunk",
        "metrics.enabled=true",
        f"device={args.device}",
        "progress=false",
        *args.overrides,
    ]
    t = Trainer(config.resolve(args.preset, overrides=overrides), run, log=lambda m: None)
    sync = torch.cuda.synchronize if t.device.type == "cuda" else (lambda: None)
    seen, share_s = [], []
    generate = t.generate

    def timed_generate(*a, **k):
        t0 = time.perf_counter()
        x = generate(*a, **k)
        sync()
        share_s.append(time.perf_counter() - t0)
        return x

    t.generate = timed_generate
    t.eval_hooks.append(lambda tr, samples, step: seen.append(samples) or {})
    t.model.eval()
    dist.barrier()
    t0 = time.perf_counter()
    rec = t.evaluate()
    sync()
    mine = {"rank": rank, "eval_s": time.perf_counter() - t0, "share_s": share_s[0], "share": t.eval_share}
    ranks = [None] * world
    dist.all_gather_object(ranks, mine)
    if rank == 0:
        t1 = time.perf_counter()
        single = generate(args.samples)  # the same samples made by this process alone
        sync()
        single_s = time.perf_counter() - t1
        record = {
            "device": torch.cuda.get_device_name(t.device) if t.device.type == "cuda" else "cpu",
            "world": world,
            "samples": args.samples,
            "batch": args.batch,
            "preset": args.preset,
            "ranks": ranks,
            "single_process_s": single_s,
            "speedup": single_s / max(r["share_s"] for r in ranks),
            "max_abs_diff": float((seen[0] - single).abs().max()),
            "fd": rec.get("fd"),
            "val_loss": rec.get("val_loss"),
        }
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(json.dumps(record))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
