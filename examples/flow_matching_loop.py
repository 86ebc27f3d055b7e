"""A diffusers flow-matching loop (SD3 / Flux style) with the library's timestep sampling dropped in.

The stock recipe — ``FlowMatchEulerDiscreteScheduler``, x_t = (1 − t')·x0 + t'·ε with t' the scheduler's shifted
sigma, the velocity target ε − x0, t drawn by ``compute_density_for_timestep_sampling`` — keeps its model, its
scheduler and its sampling loop; the library decides *which* t each batch trains on (``--sampler``: logit-normal,
SD3's default, or any curriculum such as ddc or learning-progress), with what loss weight (``--weighting``: none,
cosmap, sigma_sqrt, min-snr, ...), and watches the loss through ``sampler.observe``. The changed lines::

    u = compute_density_for_timestep_sampling(...)   ->  draw = sampler.sample(B, ...); u = draw.t
    sigmas = scheduler.sigmas[indices]               ->  sigmas = process.shifted(u)   (the scheduler's shift)
    weighting = compute_loss_weighting_for_sd3(...)  ->  weight_of(u) × draw.weight
                                                         sampler.observe(u, per_sample.detach())

``FlowProcess.from_scheduler`` reads the scheduler's shift and timestep scale, so the noising, the network's
timestep input (sigma·1000) and the inference grid of ``scheduler.set_timesteps`` are the scheduler's own. At the
end the scheduler's own Euler loop generates samples. Data: scikit-learn's bundled 8x8 digits (no download)::

    python examples/flow_matching_loop.py --steps 300
    python examples/flow_matching_loop.py --sampler ddc --weighting cosmap --shift 3
"""

from __future__ import annotations

import argparse
import math

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel

from diffusion_curriculum import timesteps, weighting
from diffusion_curriculum.data import Batcher, load
from diffusion_curriculum.process import FlowProcess


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--channels", type=int, default=16, help="UNet width (block_out_channels = c, 2c)")
    ap.add_argument("--shift", type=float, default=1.0, help="the scheduler's shift (SD3 uses 3)")
    ap.add_argument("--sampler", default="logit-normal", choices=timesteps.names())
    ap.add_argument("--weighting", default="none", choices=sorted(weighting.REGISTRY))
    ap.add_argument("--sample-steps", type=int, default=10, help="Euler steps of the final generation")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(args.seed)  # timesteps and noise: one CPU stream, same on any device

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

    # --- the library: the scheduler's process, a sampler, a weighting on the velocity target -----------------
    process = FlowProcess.from_scheduler(scheduler)
    params = {"clusters": 4} if args.sampler == "ddc" else {}
    sampler = timesteps.build(args.sampler, process, total_steps=args.steps, **params)
    weight_of = weighting.build(args.weighting, process, "v")

    batches = Batcher(load("digits"), args.batch_size, generator_seed=args.seed, device=device)
    loss = torch.zeros(())
    for step in range(1, args.steps + 1):
        x0 = batches.next()  # [B, 1, 8, 8] in [-1, 1]
        noise = torch.randn(x0.shape, generator=gen).to(device)
        draw = sampler.sample(x0.shape[0], device=device, generator=gen)  # was: compute_density_for_...
        sigmas = process.shifted(draw.t).view(-1, 1, 1, 1)  # was: scheduler.sigmas[indices]
        noisy = (1.0 - sigmas) * x0 + sigmas * noise
        pred = model(noisy, sigmas.flatten() * scheduler.config.num_train_timesteps).sample
        target = noise - x0  # the velocity
        per_sample = ((pred - target) ** 2).flatten(1).mean(1)  # [B]
        loss = (per_sample * weight_of(draw.t) * draw.weight).mean()

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sampler.observe(draw.t, per_sample.detach())

        if not math.isfinite(loss.item()):
            raise SystemExit(f"the loss became {loss.item()} at step {step}; lower --lr")
        if args.log_every and step % args.log_every == 0:
            print(f"step {step:5d}  loss {loss.item():.4f}  sampler {sampler.status()}", flush=True)

    # generation with the scheduler's own Euler loop: its grid is the library's FlowProcess.shifted_grid
    scheduler.set_timesteps(args.sample_steps, device=device)
    assert torch.allclose(scheduler.sigmas.cpu(), process.shifted_grid(args.sample_steps).float(), atol=1e-6)
    x = torch.randn((16, 1, 8, 8), generator=gen).to(device)
    with torch.no_grad():
        for t in scheduler.timesteps:
            v = model(x, t.expand(x.shape[0])).sample
            x = scheduler.step(v, t, x).prev_sample
    print(f"generated 16 samples, mean {x.mean().item():.3f}, std {x.std().item():.3f}")
    print(f"done: steps={args.steps}, final loss={loss.item():.6f}, sampler={sampler.status()}")
    return loss.item()


if __name__ == "__main__":
    main()
