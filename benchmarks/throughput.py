"""Trainer overhead: steps/s of the library's trainer vs a bare hand-written PyTorch loop.

Both train the same model on the same data with the same batch, AdamW, gradient clipping and EMA; the bare loop
has no sampler object, no weighting, no histogram, no RNG bookkeeping, no progress bar and no metrics file. Both
are built once, then timed in alternating blocks (trainer block, bare block, trainer block, ...) in one process,
so drifts in machine speed hit both alike. The trainer side runs ``Trainer.advance`` — the body of ``run``
with its logging cadence — so its bookkeeping is included; evaluation and checkpoints are off on both sides.

    python benchmarks/throughput.py                       # digits preset, CPU
    python benchmarks/throughput.py --device cuda model.channels=64 batch_size=256
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import torch

from diffusion_curriculum import config, data, models
from diffusion_curriculum import process as process_mod
from diffusion_curriculum.train import Trainer, resolve_device


class BareLoop:
    """A plain DDPM training loop as a user would write it (ε-prediction, uniform t, AdamW, clipping, EMA)."""

    def __init__(self, cfg: dict, device: torch.device):
        torch.manual_seed(cfg["seed"])
        self.device = device
        ds = data.load(cfg["dataset"]["name"], seed=cfg["seed"])
        self.x = ds.data.to(device)
        mparams = {k: v for k, v in cfg["model"].items() if k != "name"}
        self.model = models.build(cfg["model"]["name"], ds.shape, **mparams).to(device).train()
        self.params = list(self.model.parameters())
        self.ema = [p.detach().clone() for p in self.params]
        oc = cfg["optim"]
        self.opt = torch.optim.AdamW(
            self.params,
            lr=cfg["lr"],
            betas=(oc["beta1"], oc["beta2"]),
            eps=oc["eps"],
            weight_decay=oc["weight_decay"],
            foreach=device.type == "cuda" or None,
        )
        ac = process_mod.build(**cfg["process"]).alphas_cumprod.float().to(device)
        self.sa, self.s1a, self.T = ac.sqrt(), (1 - ac).sqrt(), ac.numel()
        self.B, self.clip, self.ema_cfg = cfg["batch_size"], oc["grad_clip"], cfg["ema"]
        self.perm, self.pos, self.s = torch.randperm(self.x.shape[0], device=device), 0, 0

    def step(self) -> None:
        B, n = self.B, self.x.shape[0]
        if self.pos + B > n:
            self.perm, self.pos = torch.randperm(n, device=self.device), 0
        x0 = self.x[self.perm[self.pos : self.pos + B]]
        self.pos += B
        t = torch.randint(0, self.T, (B,), device=self.device)
        noise = torch.randn_like(x0)
        x_t = self.sa[t].view(-1, 1, 1, 1) * x0 + self.s1a[t].view(-1, 1, 1, 1) * noise
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            out = self.model(x_t, t.float())
        loss = (out.float() - noise).pow(2).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        with torch.no_grad():
            d = min(self.ema_cfg["decay"], (1 + self.s) / (self.ema_cfg["warmup"] + self.s))
            torch._foreach_lerp_(self.ema, self.params, 1 - d)
        self.s += 1


def timed(fn, n: int, device: torch.device) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="digits")
    ap.add_argument("--block", type=int, default=50, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=30, help="alternating blocks per side")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    total = args.block * (args.rounds + 1)
    cfg = config.resolve(
        args.preset,
        overrides=[
            *args.overrides,
            f"device={device}",
            f"steps={total}",
            "eval_every=0",
            "checkpoint_every=0",
            "progress=false",
            "metrics.enabled=false",
        ],
    )
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(cfg, d)
        trainer.model.train()
        bare = BareLoop(cfg, device)
        timed(trainer.advance, args.block, device)  # warm-up both sides
        timed(bare.step, args.block, device)
        t_tr = t_bare = 0.0
        per_round = []
        for _ in range(args.rounds):
            a = timed(trainer.advance, args.block, device)
            b = timed(bare.step, args.block, device)
            t_tr, t_bare = t_tr + a, t_bare + b
            per_round.append(a / b)
    n = args.block * args.rounds
    per_round.sort()
    result = {
        "preset": args.preset,
        "overrides": args.overrides,
        "device": str(device),
        "machine": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "block": args.block,
        "rounds": args.rounds,
        "parameters": models.count_parameters(bare.model),
        "bare_steps_per_s": round(n / t_bare, 2),
        "trainer_steps_per_s": round(n / t_tr, 2),
        "overhead_percent": round(100 * (t_tr / t_bare - 1), 2),
        "overhead_percent_median_round": round(100 * (per_round[len(per_round) // 2] - 1), 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
