"""The timestep part of diffusers' SD3 / Flux training loop, switched to this library by one import.

The loop below keeps the SD3 script's structure: u from ``compute_density_for_timestep_sampling``, the indices
``(u · num_train_timesteps).long()`` into the scheduler's timesteps and (shifted) sigmas, x_t = (1 − σ)·x0 + σ·ε,
the velocity target ε − x0, and the per-sample weight of ``compute_loss_weighting_for_sd3``. The only changes
from a script that imports those two functions from ``diffusers.training_utils``::

    from diffusion_curriculum.diffusers_compat import (            # was: from diffusers.training_utils import ...
        compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3, configure, observe)
    configure(args.weighting_scheme, total_steps=args.max_train_steps)   # only for a strategy of this library
    ...
    observe(args.weighting_scheme, u, per_sample.detach())             # after optimizer.step(), every step

diffusers' own schemes (``logit_normal``, ``mode``, ``none``, ``sigma_sqrt``, ``cosmap``) give exactly what
diffusers gives; every strategy of this library works by its name (``loss-second-moment``, ``ddc``, ``clts``,
``laplace``, ...). Data: scikit-learn's bundled 8x8 digits, a small diffusers UNet::

    python examples/sd3_loop.py --weighting-scheme logit_normal --steps 300
    python examples/sd3_loop.py --weighting-scheme loss-second-moment --shift 3
"""

from __future__ import annotations

import argparse
import math

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel

from diffusion_curriculum.data import Batcher, load
from diffusion_curriculum.diffusers_compat import (
    DIFFUSERS_SCHEMES,
    compute_density_for_timestep_sampling,
    compute_loss_weighting_for_sd3,
    configure,
    observe,
)


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps (the script's max_train_steps)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--shift", type=float, default=3.0, help="the scheduler's shift (SD3: 3)")
    ap.add_argument(
        "--weighting-scheme", default="logit_normal", help="a diffusers scheme or a library strategy"
    )
    ap.add_argument("--logit-mean", type=float, default=0.0)
    ap.add_argument("--logit-std", type=float, default=1.0)
    ap.add_argument("--mode-scale", type=float, default=1.29)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(args.seed)
    c = args.channels
    model = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(c, 2 * c),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
    ).to(device)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=args.shift)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    if args.weighting_scheme not in DIFFUSERS_SCHEMES:
        configure(args.weighting_scheme, total_steps=args.steps)  # the library strategy, planned over the run

    batches = Batcher(load("digits"), args.batch_size, generator_seed=args.seed, device=device)
    n_train = scheduler.config.num_train_timesteps
    schedule_sigmas = scheduler.sigmas.to(device)
    schedule_timesteps = scheduler.timesteps.to(device)
    loss = torch.zeros(())
    for step in range(1, args.steps + 1):
        x0 = batches.next()
        noise = torch.randn(x0.shape, generator=gen).to(device)
        bsz = x0.shape[0]
        u = compute_density_for_timestep_sampling(
            weighting_scheme=args.weighting_scheme,
            batch_size=bsz,
            logit_mean=args.logit_mean,
            logit_std=args.logit_std,
            mode_scale=args.mode_scale,
            generator=gen,
        ).to(device)
        indices = (u * n_train).long().clamp(0, n_train - 1)
        timesteps = schedule_timesteps[indices]
        sigmas = schedule_sigmas[indices].view(-1, 1, 1, 1)
        noisy = (1.0 - sigmas) * x0 + sigmas * noise
        pred = model(noisy, timesteps).sample
        target = noise - x0
        weighting = compute_loss_weighting_for_sd3(weighting_scheme=args.weighting_scheme, sigmas=sigmas)
        per_sample = (weighting.float() * (pred.float() - target.float()) ** 2).reshape(bsz, -1).mean(1)
        loss = per_sample.mean()

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        observe(args.weighting_scheme, u, ((pred - target) ** 2).reshape(bsz, -1).mean(1).detach())

        if not math.isfinite(loss.item()):
            raise SystemExit(f"the loss became {loss.item()} at step {step}; lower --lr")
        if args.log_every and step % args.log_every == 0:
            print(f"step {step:5d}  loss {loss.item():.4f}", flush=True)
    print(f"done: steps={args.steps}, final loss={loss.item():.6f}, scheme={args.weighting_scheme}")
    return loss.item()


if __name__ == "__main__":
    main()
