"""The device contract on a GPU: no host sync in a training step of any sampler, and what each sampler costs
inside the loop (not after a ``synchronize``: the sync is what costs on a GPU).

1. ``sync_free``: for every sampler × process (VP, EDM, flow) × conditioning (off / on), a small trainer takes a
   few warm-up steps, then 50 steps under ``torch.cuda.set_sync_debug_mode("error")``, which raises at the first
   operation that synchronises the host with the GPU. A row says ``ok`` or the first error line.
2. ``step_times``: the trainer's step time with each sampler against a bare hand-written loop
   (``throughput.BareLoop``), timed with CUDA events over blocks of steps, on a launch-bound setting (the digits
   UNet, batch 16) and a compute-bound one (a 64-channel mnist5k UNet, batch 256), in one table.

    python benchmarks/sync_check.py --device cuda --out /tmp/sync      # about 3 minutes on one GPU
    python benchmarks/sync_check.py --smoke --out /tmp/sync            # the plumbing, on the CPU (no sync check)

Also run by ``benchmarks/gpu_suite.py`` as its part ``syncs``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT / "src", ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import torch  # noqa: E402

from diffusion_curriculum import config, timesteps  # noqa: E402
from diffusion_curriculum.training.trainer import Trainer  # noqa: E402

#: the three processes, as trainer overrides
PROCESSES = {
    "vp": [],
    "edm": ["process.name=edm"],
    "flow": ["process.name=flow", "prediction=v"],
}
KIND = {"vp": "discrete", "edm": "continuous", "flow": "flow"}
#: parameters that make a strategy do its real per-step work within the steps measured
PARAMS = {
    "interval": {"vp": ["sampler.lo=0", "sampler.hi=500"], "flow": ["sampler.hi=0.5"]},
    "ddc": ["sampler.clusters=4", "sampler.window=4", "sampler.max_steps_per_stage=10"],
    "loss-second-moment": ["sampler.history=1"],
}
#: (preset, overrides) of the two step-time settings
SETTINGS = {
    "launch-bound": ("digits", ["batch_size=16"]),
    "compute-bound": ("mnist5k", ["model.channels=64", "batch_size=256"]),
}
QUIET = [
    "eval_every=0",
    "eval.method=auto",
    "checkpoint_every=0",
    "log_every=100000",
    "metrics.enabled=false",
    "progress=false",
]


def _params(name: str, proc: str) -> list[str]:
    p = PARAMS.get(name, [])
    return p.get(proc, []) if isinstance(p, dict) else p


def _trainer(out: Path, preset: str, overrides: list[str], device: str) -> Trainer:
    cfg = config.resolve(preset, overrides=[*QUIET, f"device={device}", *overrides])
    return Trainer(cfg, out, log=lambda m: None)


def sync_free(device: str, work: Path, steps: int = 50, warm: int = 8) -> list[dict]:
    """One row per sampler × process × conditioning: ``ok`` or the first synchronising operation's error."""
    rows = []
    check = torch.device(device).type == "cuda"
    for name in timesteps.names():
        for proc in PROCESSES:
            if KIND[proc] not in timesteps.REGISTRY[name].supports:
                continue
            for cond in (False, True):
                extra = [*PROCESSES[proc], f"sampler.name={name}", *_params(name, proc)]
                extra += ["cond.enabled=true"] if cond else []
                run = work / f"sync-{name}-{proc}-{int(cond)}"
                t = _trainer(run, "digits", ["model.channels=16", "batch_size=32", *extra], device)
                for _ in range(warm):
                    t.advance()
                result = "ok" if check else "not checked (no CUDA)"
                try:
                    if check:
                        torch.cuda.synchronize()
                        torch.cuda.set_sync_debug_mode("error")
                    for _ in range(steps):
                        t.advance()
                except RuntimeError as e:
                    result = str(e).splitlines()[0][:200]
                finally:
                    if check:
                        torch.cuda.set_sync_debug_mode("default")
                rows.append({"sampler": name, "process": proc, "cond": cond, "result": result})
                t.close()
    return rows


def _time_block(fn, n: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` over ``n`` calls: CUDA events on a GPU (no sync inside the block), else the
    wall clock."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / n
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def step_times(device: str, work: Path, block: int = 50, rounds: int = 3, settings=SETTINGS) -> list[dict]:
    """ms per step of the trainer with each sampler (VP) and of a bare loop, per setting; the median round."""
    from throughput import BareLoop

    dev = torch.device(device)
    rows = []
    for setting, (preset, overrides) in settings.items():
        bare = BareLoop(config.resolve(preset, overrides=overrides), dev)
        row = {"setting": setting, "bare_ms": None}
        times = {"bare": []}
        trainers = {}
        for name in timesteps.names():
            extra = [*overrides, f"sampler.name={name}", *_params(name, "vp")]
            trainers[name] = _trainer(work / f"time-{setting}-{name}", preset, extra, device)
            times[name] = []
        for fn in [bare.step, *(t.advance for t in trainers.values())]:  # warm-up: allocations, lazy tables
            for _ in range(3):
                fn()
        for _ in range(rounds):  # alternate, so drifts of the clock hit every side alike
            times["bare"].append(_time_block(bare.step, block, dev))
            for name, t in trainers.items():
                times[name].append(_time_block(t.advance, block, dev))
        med = {k: sorted(v)[len(v) // 2] * 1e3 for k, v in times.items()}
        row["bare_ms"] = round(med["bare"], 3)
        for name in trainers:
            row[name] = round(med[name], 3)
            row[f"{name}_vs_bare_pct"] = round(100 * (med[name] / med["bare"] - 1), 1)
            trainers[name].close()
        rows.append(row)
    return rows


def markdown(sync_rows: list[dict], time_rows: list[dict]) -> str:
    """The two tables as Markdown."""
    lines = ["| sampler | process | cond | 50 steps under sync debug mode 'error' |", "|---|---|---|---|"]
    lines += [
        f"| {r['sampler']} | {r['process']} | {'on' if r['cond'] else 'off'} | {r['result']} |"
        for r in sync_rows
    ]
    if time_rows:
        names = timesteps.names()
        lines += [
            "",
            "| setting | bare loop ms | " + " | ".join(names) + " |",
            "|---|---|" + "---|" * len(names),
        ]
        for r in time_rows:
            cells = [f"{r[n]} ({r[f'{n}_vs_bare_pct']:+} %)" for n in names]
            lines.append(f"| {r['setting']} | {r['bare_ms']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="sync_check_out")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny settings: the plumbing only")
    ap.add_argument("--block", type=int, default=50, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=3, help="timed blocks per side (the median is kept)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.device, args.block, args.rounds = "cpu", 2, 1
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA GPU is available here; run with --smoke on a CPU", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sync_check_"))
    settings = (
        {"launch-bound": ("digits", ["batch_size=16", "model.channels=8", "model.groups=8"])}
        if args.smoke
        else SETTINGS
    )
    sync_rows = sync_free(args.device, work, steps=3 if args.smoke else 50, warm=2 if args.smoke else 8)
    time_rows = step_times(args.device, work, args.block, args.rounds, settings)
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    record = {"device": gpu, "torch": torch.__version__, "sync": sync_rows, "step_times": time_rows}
    (out / "sync_check.json").write_text(json.dumps(record, indent=1))
    (out / "sync_check.md").write_text(
        f"{gpu}, torch {torch.__version__}\n\n" + markdown(sync_rows, time_rows)
    )
    bad = [r for r in sync_rows if r["result"] not in ("ok", "not checked (no CUDA)")]
    print(f"{len(sync_rows) - len(bad)}/{len(sync_rows)} sync-free; tables in {out}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
