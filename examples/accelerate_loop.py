"""Checkpoint and resume a curriculum with 🤗 Accelerate: the sampler and the momentum schedule ride along.

Shows that the library's stateful objects are ordinary Accelerate "custom objects": ``sampler``,
``MomentumDecay`` and the data ``Batcher`` each have ``state_dict`` / ``load_state_dict``, so one call,
``accelerator.register_for_checkpointing(sampler, momentum, batches)``, makes ``accelerator.save_state`` /
``load_state`` carry them with the model, the optimizer and the RNG states.

The script trains a small MLP on 2-D toy data (8 Gaussians, generated in-script) with a DDC curriculum and
MDLRC, saves the state half-way (``--save-at``), finishes the run, then builds *fresh* objects (different
seed, a new Accelerator), calls ``load_state`` and checks that

* the restored sampler's ``state_dict`` equals the one saved (both are printed), and
* the resumed run's remaining losses equal the uninterrupted run's, bit for bit.

Timesteps and noise come from torch's global RNG (``generator=None``) because Accelerate saves and restores it;
with your own ``torch.Generator`` save its ``get_state()`` too. Runs on a CPU in seconds::

    python examples/accelerate_loop.py --steps 200
"""

from __future__ import annotations

import argparse
import math
import tempfile

import torch
from accelerate import Accelerator

from diffusion_curriculum import models, optim, timesteps
from diffusion_curriculum.data import Batcher, load
from diffusion_curriculum.process import DiscreteProcess


def build(args, seed: int):
    """Everything a run needs, freshly made: model, optimizer, sampler, momentum schedule, batches."""
    torch.manual_seed(seed)
    process = DiscreteProcess.cosine(T=args.timesteps)
    model = models.build("mlp", (2,), hidden=args.hidden, depth=2, time_dim=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    sampler = timesteps.build(
        "ddc",
        process,
        total_steps=args.steps,
        clusters=args.clusters,
        max_steps_per_stage=args.max_steps_per_stage,
    )
    batches = Batcher(load("8gaussians", n=4096, seed=0), args.batch_size, generator_seed=seed)
    return process, model, optimizer, sampler, batches


def train_steps(
    accelerator, process, model, optimizer, sampler, momentum, batches, steps: int
) -> list[float]:
    """``steps`` optimizer steps of ε-prediction; returns each step's loss."""
    losses = []
    for _ in range(steps):
        x0 = batches.next().to(accelerator.device)
        noise = torch.randn_like(x0)
        draw = sampler.sample(x0.shape[0], device=accelerator.device)  # global RNG: Accelerate restores it
        x_t = process.add_noise(x0, noise, draw.t)
        per_sample = ((model(*process.model_input(x_t, draw.t)) - noise) ** 2).mean(1)
        loss = (draw.weight * per_sample).mean()
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        momentum.step()
        sampler.observe(draw.t, per_sample.detach())
        losses.append(loss.item())
    return losses


def same(a, b) -> bool:
    """Deep equality for state dicts (tensors compared exactly)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    return a == b


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps of the whole run")
    ap.add_argument(
        "--save-at", type=int, default=None, help="step after which to save (default: steps // 2)"
    )
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--hidden", type=int, default=64, help="MLP width")
    ap.add_argument("--timesteps", type=int, default=1000)
    ap.add_argument("--clusters", type=int, default=5, help="DDC clusters")
    ap.add_argument(
        "--max-steps-per-stage",
        type=int,
        default=None,
        help="DDC's cap on a curriculum stage (default: derived from --steps)",
    )
    ap.add_argument("--out", default=None, help="checkpoint folder (default: a temporary one)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    save_at = args.steps // 2 if args.save_at is None else args.save_at
    if not 0 < save_at < args.steps:
        raise SystemExit(f"--save-at={save_at} must lie strictly between 0 and --steps={args.steps}")
    if args.out is None:
        with tempfile.TemporaryDirectory(prefix="dc-accelerate-") as out:
            return run(args, save_at, out)
    return run(args, save_at, args.out)


def run(args, save_at: int, out: str) -> float:
    """Train with a save at ``save_at``, resume fresh objects from ``out`` and compare; returns the final loss."""
    # --- the uninterrupted run, saving half-way -----------------------------------------------------------
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    process, model, optimizer, sampler, batches = build(args, args.seed)
    model, optimizer = accelerator.prepare(model, optimizer)
    momentum = optim.MomentumDecay(optimizer, total_steps=args.steps)
    accelerator.register_for_checkpointing(sampler, momentum, batches)

    train_steps(accelerator, process, model, optimizer, sampler, momentum, batches, save_at)
    accelerator.save_state(out)
    saved = sampler.state_dict()
    print(f"saved at step {save_at} to {out}: sampler {saved}", flush=True)
    tail = train_steps(
        accelerator, process, model, optimizer, sampler, momentum, batches, args.steps - save_at
    )

    # --- a fresh start from the checkpoint: new objects (another seed), load_state ----------------------
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    process, model, optimizer, sampler, batches = build(args, args.seed + 1)
    model, optimizer = accelerator.prepare(model, optimizer)
    momentum = optim.MomentumDecay(optimizer, total_steps=args.steps)
    accelerator.register_for_checkpointing(sampler, momentum, batches)  # same objects, same order as saved
    accelerator.load_state(out)
    restored = sampler.state_dict()
    print(f"restored sampler {restored}")
    state_ok = same(saved, restored)
    print(f"sampler state round-trips: {state_ok}")
    resumed = train_steps(
        accelerator, process, model, optimizer, sampler, momentum, batches, args.steps - save_at
    )
    # bit for bit on a CPU; a GPU may reorder floating-point sums between runs, so allow rounding there
    diff = max(abs(a - b) for a, b in zip(resumed, tail))
    losses_ok = diff <= (0.0 if accelerator.device.type == "cpu" else 1e-5 * max(1.0, abs(tail[-1])))
    print(f"resumed losses equal the uninterrupted run's: {losses_ok} (largest difference {diff:.3g})")
    if not (state_ok and losses_ok):
        raise SystemExit("resume through accelerate.save_state / load_state did not reproduce the run")
    if not math.isfinite(resumed[-1]):
        raise SystemExit(f"the loss became {resumed[-1]}; lower --lr")
    print(f"done: steps={args.steps}, final loss={resumed[-1]:.6f}, sampler={sampler.status()}")
    return resumed[-1]


if __name__ == "__main__":
    main()
