"""Trainer overhead: steps/s of `diffusion-curriculum train` vs a bare hand-written PyTorch loop.

Both train the same model on the same data with the same batch, AdamW, gradient clipping and EMA; the bare loop
has no sampler object, no checkpoint/RNG bookkeeping, no progress bar and no metrics file. They run interleaved
(trainer, bare, trainer, bare, ...) in one process so machine noise hits both alike; the overhead is reported
from the medians.

    python benchmarks/throughput.py                       # digits preset, CPU
    python benchmarks/throughput.py --device cuda --steps 500 model.channels=64 batch_size=256
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time

import torch

from diffusion_curriculum import config, data, models, process as process_mod
from diffusion_curriculum.train import Trainer, resolve_device


def bare_loop(cfg: dict, steps: int, device: torch.device) -> float:
    """A plain DDPM loop as a user would write it; returns steps/s over ``steps`` steps."""
    torch.manual_seed(cfg["seed"])
    ds = data.load(cfg["dataset"]["name"], seed=cfg["seed"])
    x_all = ds.data.to(device)
    mparams = {k: v for k, v in cfg["model"].items() if k != "name"}
    model = models.build(cfg["model"]["name"], ds.shape, **mparams).to(device)
    ema = [p.detach().clone() for p in model.parameters()]
    params = list(model.parameters())
    oc = cfg["optim"]
    opt = torch.optim.AdamW(
        params,
        lr=cfg["lr"],
        betas=(oc["beta1"], oc["beta2"]),
        eps=oc["eps"],
        weight_decay=oc["weight_decay"],
        foreach=device.type == "cuda" or None,
    )
    proc = process_mod.build(**{k: v for k, v in cfg["process"].items()})
    ac = proc.alphas_cumprod.float().to(device)
    sa, s1a = ac.sqrt(), (1 - ac).sqrt()
    T, B, N = proc.T, cfg["batch_size"], x_all.shape[0]
    perm, pos = torch.randperm(N, device=device), 0
    bf16 = device.type == "cuda"
    model.train()
    t0 = time.perf_counter()
    for s in range(steps):
        if pos + B > N:
            perm, pos = torch.randperm(N, device=device), 0
        x0 = x_all[perm[pos : pos + B]]
        pos += B
        t = torch.randint(0, T, (B,), device=device)
        noise = torch.randn_like(x0)
        x_t = sa[t].view(-1, 1, 1, 1) * x0 + s1a[t].view(-1, 1, 1, 1) * noise
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x_t, t.float())
        loss = (out.float() - noise).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, oc["grad_clip"])
        opt.step()
        with torch.no_grad():
            d = min(cfg["ema"]["decay"], (1 + s) / (cfg["ema"]["warmup"] + s))
            torch._foreach_lerp_(ema, params, 1 - d)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def trainer_loop(cfg: dict, steps: int) -> float:
    """The library's trainer on the same settings; returns its own measured steps/s (training loop only)."""
    cfg = config.validate(
        config.apply_overrides(
            cfg,
            [
                f"steps={steps}",
                "eval_every=0",
                "checkpoint_every=0",
                "progress=false",
                "eval.samples=4",
                "eval.steps=2",
            ],
        )
    )
    with tempfile.TemporaryDirectory() as d:
        summary = Trainer(cfg, d).run()
    return summary["steps_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="digits")
    ap.add_argument("--steps", type=int, default=300, help="steps per timed block")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved blocks per side")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = config.resolve(args.preset, overrides=[*args.overrides, f"device={device}"])
    bare_loop(cfg, 20, device)  # warm-up (allocator, kernels)
    bare, trainer = [], []
    for _ in range(args.repeats):
        trainer.append(trainer_loop(cfg, args.steps))
        bare.append(bare_loop(cfg, args.steps, device))
    tb, tt = statistics.median(bare), statistics.median(trainer)
    result = {
        "preset": args.preset,
        "overrides": args.overrides,
        "device": str(device),
        "machine": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "steps_per_block": args.steps,
        "repeats": args.repeats,
        "bare_steps_per_s": [round(x, 2) for x in bare],
        "trainer_steps_per_s": [round(x, 2) for x in trainer],
        "bare_median": round(tb, 2),
        "trainer_median": round(tt, 2),
        "overhead_percent": round(100 * (tb / tt - 1), 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
