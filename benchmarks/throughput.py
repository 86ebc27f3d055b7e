"""Trainer overhead: steps/s of the library's trainer vs a bare hand-written PyTorch loop.

Both train the same model on the same data with the same batch, AdamW, gradient clipping and EMA; the bare loop
has no sampler object, no weighting, no histogram, no RNG bookkeeping, no progress bar and no metrics file. Both
are built once, then timed in alternating blocks (trainer block, bare block, trainer block, ...) in one process,
so drifts in machine speed hit both alike. The trainer side runs ``Trainer.advance`` — the body of ``run``
with its logging cadence — so its bookkeeping is included; evaluation and checkpoints are off on both sides.

Both sides follow the run's ``precision`` (``auto``: bf16 autocast on a GPU that has it natively, fp32 elsewhere;
``--precision`` sets it) and use the same optimizer kernels. ``--with-sync-variant`` adds a third side, the bare
loop reading its loss back to the host every step as many hand-written loops do (``float(loss)``), so what such a
read costs is measured; the trainer itself reads no device data in a step (docs/design.md, "The device
contract"). On a GPU the blocks are timed with no sync inside them, only at their ends.

    python benchmarks/throughput.py                       # digits preset, CPU
    python benchmarks/throughput.py --device cuda model.channels=64 batch_size=256
    python benchmarks/throughput.py --device cuda --precision bf16 --with-sync-variant --preset mnist5k \
        model.channels=64 batch_size=512
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


def uses_bf16(precision: str, device: torch.device) -> bool:
    """The trainer's rule (:func:`~diffusion_curriculum.training.components.use_bf16`)."""
    from diffusion_curriculum.training.components import use_bf16

    return use_bf16(precision, device)


class BareLoop:
    """A plain DDPM training loop as a user would write it (ε-prediction, uniform t, AdamW, clipping, EMA).

    It autocasts to bf16 under the same rule as the trainer (``cfg["precision"]``). With ``sync=True`` it also
    reads the loss back to the host every step, before the backward pass (as many hand-written loops do)."""

    def __init__(self, cfg: dict, device: torch.device, *, sync: bool = False):
        torch.manual_seed(cfg["seed"])
        self.device = device
        self.bf16 = uses_bf16(cfg["precision"], device)
        self.sync = sync
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
            fused=device.type == "cuda" or None,  # as the trainer's
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
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(x_t, t.float())
        loss = (out.float() - noise).pow(2).mean()
        if self.sync:
            float(loss.detach())  # a per-step host read of the loss
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


def measure(
    preset: str,
    overrides: list[str] = (),
    *,
    block: int = 50,
    rounds: int = 30,
    device: str | torch.device = "auto",
    precision: str | None = None,
    sync_variant: bool = False,
    deadline: float | None = None,
) -> dict:
    """Time the trainer against the bare loop (and, with ``sync_variant``, the bare loop with a per-step loss
    sync) in alternating blocks of ``block`` steps, ``rounds`` blocks per side; return the result record.

    ``precision`` (``auto``/``fp32``/``bf16``) overrides the run's ``precision``; ``None`` keeps the preset's.
    ``deadline`` (a ``time.perf_counter()`` value) stops after the first round that ends past it; the record's
    ``rounds`` says how many were timed."""
    device = resolve_device(str(device))
    total = block * (rounds + 1)
    cfg = config.resolve(
        preset,
        overrides=[
            *overrides,
            *([f"precision={precision}"] if precision else []),
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
        sides = {"trainer": trainer.advance, "bare": bare.step}
        if sync_variant:
            sides["bare_sync"] = BareLoop(cfg, device, sync=True).step
        for fn in sides.values():  # warm-up every side
            timed(fn, block, device)
        spent = dict.fromkeys(sides, 0.0)
        per_round: dict[str, list[float]] = {k: [] for k in sides if k != "bare"}
        done = 0
        for _ in range(rounds):
            t = {k: timed(fn, block, device) for k, fn in sides.items()}
            for k in sides:
                spent[k] += t[k]
            for k in per_round:
                per_round[k].append(t[k] / t["bare"])
            done += 1
            if deadline is not None and time.perf_counter() > deadline:
                break
    n = block * done

    def median_pct(k: str) -> float:
        r = sorted(per_round[k])
        return round(100 * (r[len(r) // 2] - 1), 2)

    result = {
        "preset": preset,
        "overrides": list(overrides),
        "device": str(device),
        "machine": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "precision": "bf16" if uses_bf16(cfg["precision"], device) else "fp32",
        "block": block,
        "rounds": done,
        "parameters": models.count_parameters(bare.model),
        "batch_size": cfg["batch_size"],
        "bare_steps_per_s": round(n / spent["bare"], 2),
        "trainer_steps_per_s": round(n / spent["trainer"], 2),
        "overhead_percent": round(100 * (spent["trainer"] / spent["bare"] - 1), 2),
        "overhead_percent_median_round": median_pct("trainer"),
    }
    if sync_variant:
        result["bare_sync_steps_per_s"] = round(n / spent["bare_sync"], 2)
        # what one loss read-back per step costs the bare loop, and the trainer's overhead over that loop
        result["sync_cost_percent"] = round(100 * (spent["bare_sync"] / spent["bare"] - 1), 2)
        result["sync_cost_percent_median_round"] = median_pct("bare_sync")
        result["overhead_vs_bare_sync_percent"] = round(100 * (spent["trainer"] / spent["bare_sync"] - 1), 2)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="digits")
    ap.add_argument("--block", type=int, default=50, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=30, help="alternating blocks per side")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        help="both sides' precision (default: the preset's, auto: bf16 autocast on CUDA, fp32 elsewhere)",
    )
    ap.add_argument(
        "--with-sync-variant",
        action="store_true",
        help="also time the bare loop with a per-step host read of its loss (a third side)",
    )
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(
        args.preset,
        args.overrides,
        block=args.block,
        rounds=args.rounds,
        device=args.device,
        precision=args.precision,
        sync_variant=args.with_sync_variant,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
