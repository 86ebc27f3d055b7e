"""Sampler overhead: the time of ``sample`` + ``observe`` per step, for every registered strategy, against one
training step of the digits model.

A strategy's whole per-step cost is one ``sample(B)`` and one ``observe(t, per_sample_loss)``; the trainer adds
nothing else for it. Both are timed here in a tight loop (median of ``--repeats`` blocks of ``--iters`` steps,
after a warm-up), the losses being a fixed random vector so the loss-driven strategies (DDC pacing, importance
history) do their real work. The reference is the median time of one optimizer step of the digits preset
(190k-parameter UNet, batch 128: forward, backward, AdamW) on the same device, measured in the same process.
Goal: every strategy below 1 % of a training step at batch 128; batch 4096 shows how the cost scales.

On a GPU these are host times of calls that never wait for the device (the device contract: draws on the CPU,
copied over without a wait; observe queues its statistics and reads them windows later), synchronised only at the
ends of the blocks. What a sampler costs *inside* training — where any hidden sync would empty the queue — is
measured by ``benchmarks/sync_check.py`` (the trainer with each sampler against a bare loop, CUDA events).

    PYTHONPATH=src python benchmarks/sampler_overhead.py                 # CPU, batches 128 and 4096
    PYTHONPATH=src python benchmarks/sampler_overhead.py --device cuda   # draws still happen on the CPU generator
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from diffusion_curriculum import config, data, models, timesteps
from diffusion_curriculum import process as process_mod

#: strategies timed with these parameters (the registry default otherwise)
PARAMS = {"interval": {"lo": 0, "hi": 500}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_block(fn, iters: int, repeats: int, device: torch.device) -> float:
    """Median over ``repeats`` blocks of the mean seconds per call of ``fn`` (``iters`` calls per block)."""
    for _ in range(max(3, iters // 10)):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        _sync(device)
        times.append((time.perf_counter() - t0) / iters)
    return statistics.median(times)


def train_step_seconds(device: torch.device, iters: int, repeats: int) -> float:
    """Seconds per optimizer step of the digits preset's model at its batch size."""
    cfg = config.resolve("digits")
    torch.manual_seed(0)
    ds = data.load("digits")
    mparams = {k: v for k, v in cfg["model"].items() if k != "name"}
    model = models.build(cfg["model"]["name"], ds.shape, **mparams).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"])
    x0 = ds.data[: cfg["batch_size"]].to(device)
    proc = process_mod.build(**cfg["process"])
    ac = proc.alphas_cumprod.float().to(device)

    def step():
        t = torch.randint(0, proc.T, (x0.shape[0],), device=device)
        noise = torch.randn_like(x0)
        a = ac[t].view(-1, 1, 1, 1)
        loss = ((model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t) - noise) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _median_block(step, iters, repeats, device)


def sampler_seconds(name: str, batch: int, device: torch.device, iters: int, repeats: int) -> float:
    """Seconds per ``sample(batch)`` + ``observe`` of one strategy (linear β, T = 1000)."""
    proc = process_mod.DiscreteProcess.linear(1000)
    sampler = timesteps.build(name, proc, total_steps=10**6, **PARAMS.get(name, {}))
    gen = torch.Generator().manual_seed(0)
    loss = torch.rand(batch, generator=gen, device="cpu").to(device) + 0.1

    def step():
        draw = sampler.sample(batch, device=device, generator=gen)
        sampler.observe(draw.t, loss * draw.weight)

    return _median_block(step, iters, repeats, device)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--batches", default="128,4096", help="comma-separated batch sizes (default 128,4096)")
    ap.add_argument("--iters", type=int, default=200, help="calls per timed block (default 200)")
    ap.add_argument("--repeats", type=int, default=5, help="timed blocks, the median is kept (default 5)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batches = [int(b) for b in args.batches.split(",")]
    ref = train_step_seconds(device, max(5, args.iters // 20), args.repeats)
    rows = []
    for name in timesteps.names():
        row = {"sampler": name}
        for b in batches:
            s = sampler_seconds(name, b, device, args.iters, args.repeats)
            row[f"us_b{b}"] = round(s * 1e6, 1)
            row[f"pct_b{b}"] = round(100 * s / ref, 3)
        rows.append(row)
    info = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "train_step_ms": round(ref * 1e3, 2),
    }
    # the reference is always one training step at the preset's batch (128), so the % column is conservative
    head = "| sampler | " + " | ".join(f"µs/step, B={b} | % of a training step, B={b}" for b in batches)
    print(json.dumps(info))
    print(head + " |")
    print("|---" * (1 + 2 * len(batches)) + "|")
    for r in rows:
        cells = " | ".join(f"{r[f'us_b{b}']} | {r[f'pct_b{b}']} %" for b in batches)
        print(f"| `{r['sampler']}` | {cells} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**info, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
