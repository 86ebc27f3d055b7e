"""Host memory of reading a checkpoint on resume: the whole file into host memory and then onto the device (how
every rank resumed before), against the model, EMA and optimizer tensors read from the file straight onto the
device (``checkpoint.load(path, device)``, how the trainer resumes now).

    python benchmarks/resume_memory.py --out resume_memory.json                 # on a GPU: cuda
    python benchmarks/resume_memory.py --device cpu --params 20 --out m.json    # the CPU (both ways are alike)

It writes one checkpoint shaped like the trainer's (``model``, ``ema``, AdamW's two moments under ``optimizer``:
4 copies of ``--params`` million float32 parameters, plus a small rest), then reads it in a fresh process each
way and reports each process's peak resident memory over what it had before the read (``ru_maxrss`` against
``/proc/self/statm``), in MB, with the checkpoint's size and the device.
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


def resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _to(obj, device):
    """Every tensor of a nested state moved to ``device``."""
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj.to(device) if hasattr(obj, "to") else obj


def read_once(path: str, how: str, device: str) -> dict:
    """In this (fresh) process: read ``path`` the ``how`` way onto ``device``; the peak over the start, in MB."""
    import torch

    from diffusion_curriculum import checkpoint

    torch.zeros(1, device=device)  # the device's context first: not part of the read
    before = resident_mb()
    if how == "host-then-device":
        _, state = checkpoint.load(path)
        moved = _to(state, device)
        del state, moved
    else:
        _, state = checkpoint.load(path, device)
        del state
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"how": how, "peak_over_start_mb": round(peak - before, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--params", type=float, default=100, help="millions of model parameters (100)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--read", help=argparse.SUPPRESS)
    ap.add_argument("--how", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.read:
        print(json.dumps(read_once(args.read, args.how, args.device)))
        return 0
    import torch

    from diffusion_curriculum import checkpoint

    n = int(args.params * 1e6)
    layers = 10
    weights = {f"layer{i}": torch.randn(n // layers) for i in range(layers)}
    state = {
        "model": weights,
        "ema": {k: v.clone() for k, v in weights.items()},
        "optimizer": {"exp_avg": {k: v.clone() for k, v in weights.items()}, "exp_avg_sq": dict(weights)},
        "rng": torch.zeros(5056, dtype=torch.uint8),
    }
    with tempfile.TemporaryDirectory(prefix="resume_memory_") as tmp:
        path = checkpoint.save(tmp, 1, state)
        size = sum(f.stat().st_size for f in Path(path).iterdir()) / 2**20
        del state, weights
        rows = []
        for how in ("host-then-device", "straight-to-device"):
            cmd = [sys.executable, __file__, "--out", args.out, "--read", str(path), "--how", how]
            cmd += ["--device", args.device]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    dev = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    record = {"device": dev, "checkpoint_mb": round(size, 1), "params_millions": args.params, "reads": rows}
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
