"""Data-parallel throughput: training steps/s of a preset with 1 vs N processes at the same global batch.

Each configuration is a real ``python -m torch.distributed.run --standalone --nproc_per_node N -m
diffusion_curriculum train`` launch (gloo on CPU, nccl on GPU; one process per GPU), with evaluation, metrics
and periodic checkpoints off. ``batch_size`` is the global batch, so every configuration trains on the same
samples per step. The figure is the trainer's own ``steps_per_s`` (training steps only, measured on rank 0),
alongside the wall time of the whole launch (start-up, the tiny final evaluation and checkpoint included).

On CPU the processes share the machine's cores: each gets ``cores / N`` threads (``--threads-per-proc``
overrides), so 2 processes are not 2× the compute — the table shows what data parallelism costs or gains on
this machine. With one GPU only the 1-process configuration can run (NCCL needs a GPU per process).

    python benchmarks/ddp_throughput.py                         # digits preset, CPU, 1 and 2 processes
    python benchmarks/ddp_throughput.py --device cuda --procs 1,2,4 batch_size=256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def machine_info(device: str) -> dict:
    """Cores, CPU and GPU model, torch and Python versions, and the load when the benchmark started."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu or "unknown",
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if device == "cuda":
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def launch(procs: int, args, threads: int, out: Path) -> dict:
    """One torchrun launch; returns rank 0's printed summary plus the launch's wall time."""
    overrides = [
        f"steps={args.steps}",
        f"device={args.device}",
        "eval_every=0",
        "checkpoint_every=0",
        f"log_every={args.steps}",
        "progress=false",
        "metrics.enabled=false",
        "eval.samples=16",  # the run still ends with one evaluation and one checkpoint: keep them tiny
        "eval.steps=2",
        *args.overrides,
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    cmd += ["-m", "diffusion_curriculum", "train", "--preset", args.preset, "--out", str(out), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{procs} process(es) failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    summary = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])
    return {**summary, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="digits")
    ap.add_argument("--steps", type=int, default=200, help="training steps per launch (default 200)")
    ap.add_argument("--procs", default="1,2", help="comma-separated process counts (default 1,2)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--repeats", type=int, default=1, help="launches per configuration; the best is kept")
    ap.add_argument("--threads-per-proc", type=int, default=0, help="CPU threads per process (0: cores / N)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="more training overrides")
    args = ap.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    procs_list = [int(p) for p in args.procs.split(",") if p.strip()]
    skipped = []
    if args.device == "cuda":
        skipped = [p for p in procs_list if p > torch.cuda.device_count()]
        procs_list = [p for p in procs_list if p <= torch.cuda.device_count()]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for procs in procs_list:
            threads = args.threads_per_proc or max(1, cores // procs)
            best = None
            for k in range(args.repeats):
                res = launch(procs, args, threads, Path(d) / f"p{procs}-{k}")
                if best is None or res["steps_per_s"] > best["steps_per_s"]:
                    best = res
            rows.append(
                {
                    "processes": procs,
                    "backend": "nccl"
                    if args.device == "cuda" and procs > 1
                    else "gloo"
                    if procs > 1
                    else "-",
                    "threads_per_process": threads,
                    "steps_per_s": round(best["steps_per_s"], 2),
                    "train_time_s": round(best["train_time_s"], 2),
                    "wall_s": round(best["wall_s"], 2),
                }
            )
    base = rows[0]["steps_per_s"] if rows else None
    for r in rows:
        r["speedup_vs_first"] = round(r["steps_per_s"] / base, 3) if base else None
    result = {
        "preset": args.preset,
        "steps": args.steps,
        "device": args.device,
        "overrides": args.overrides,
        "repeats": args.repeats,
        "machine": machine_info(args.device),
        "rows": rows,
        "skipped_process_counts": skipped,
    }
    print(json.dumps(result, indent=2))
    print()
    print(
        f"| processes | backend | threads/process | steps/s | train time (s) | wall (s) | speed-up vs {procs_list[0]} |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['processes']} | {r['backend']} | {r['threads_per_process']} | {r['steps_per_s']} | "
            f"{r['train_time_s']} | {r['wall_s']} | {r['speedup_vs_first']} |"
        )
    if skipped:
        print(f"\nskipped {skipped}: only {torch.cuda.device_count()} GPU(s) (NCCL needs one per process)")


if __name__ == "__main__":
    main()
