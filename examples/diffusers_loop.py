"""A plain diffusers training loop with a timestep curriculum dropped in.

Shows the drop-in use on a diffusers ``UNet2DModel`` + ``DDPMScheduler``: the scheduler keeps doing the noising
(``scheduler.add_noise``), the library only decides *which* timesteps each batch trains on (``--sampler``, DDC by
default), with what extra loss weight (``--weighting``, Min-SNR-5 by default), and watches the loss through
``sampler.observe``. ``--mdlrc`` adds the momentum-decay schedule to Adam. Compared with a stock diffusers loop
only the marked lines change::

    t = torch.randint(0, T, (B,))                    ->  draw = sampler.sample(B, ...); t = draw.t
    loss = F.mse_loss(pred, target)                  ->  per-sample loss × weighting(t) × draw.weight, then mean
                                                         sampler.observe(t, per_sample.detach())

Data: scikit-learn's bundled 8x8 digits (no download). Runs on a CPU in about a minute at the defaults::

    python examples/diffusers_loop.py --steps 300
    python examples/diffusers_loop.py --sampler clts --weighting none --prediction v_prediction --mdlrc
"""

from __future__ import annotations

import argparse
import math

import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffusion_curriculum import optim, timesteps, weighting
from diffusion_curriculum.data import Batcher, load
from diffusion_curriculum.process import DiscreteProcess

# diffusers' prediction_type -> this library's prediction name (used to convert the loss weighting)
PREDICTION = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--channels", type=int, default=16, help="UNet width (block_out_channels = c, 2c)")
    ap.add_argument("--timesteps", type=int, default=1000, help="the scheduler's num_train_timesteps")
    ap.add_argument("--sampler", default="ddc", choices=timesteps.names())
    ap.add_argument("--clusters", type=int, default=10, help="DDC clusters (ddc only)")
    ap.add_argument(
        "--max-steps-per-stage",
        type=int,
        default=None,
        help="DDC's cap on a curriculum stage (ddc only; default: derived from --steps)",
    )
    ap.add_argument("--weighting", default="min-snr", choices=sorted(weighting.REGISTRY))
    ap.add_argument("--prediction", default="epsilon", choices=sorted(PREDICTION))
    ap.add_argument("--mdlrc", action="store_true", help="decay Adam's beta1 with LR compensation")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(args.seed)  # timesteps: drawn on the CPU, copied over without a wait
    noise_gen = torch.Generator(device).manual_seed(args.seed + 2)  # noise: drawn where it is used

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
    scheduler = DDPMScheduler(num_train_timesteps=args.timesteps, prediction_type=args.prediction)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    momentum = optim.MomentumDecay(optimizer, total_steps=args.steps) if args.mdlrc else None

    # --- the library: the scheduler's own alphas_cumprod, a sampler, a weighting ---------------------------
    process = DiscreteProcess.from_alphas_cumprod(scheduler.alphas_cumprod)
    params = {}
    if args.sampler == "ddc":
        params = {"clusters": args.clusters, "max_steps_per_stage": args.max_steps_per_stage}
    sampler = timesteps.build(args.sampler, process, total_steps=args.steps, **params)
    weight_of = weighting.build(args.weighting, process, PREDICTION[args.prediction])

    batches = Batcher(load("digits"), args.batch_size, generator_seed=args.seed, device=device)
    loss = torch.zeros(())
    for step in range(1, args.steps + 1):
        x0 = batches.next()  # [B, 1, 8, 8] in [-1, 1]
        noise = torch.randn(x0.shape, generator=noise_gen, device=device)
        draw = sampler.sample(x0.shape[0], device=device, generator=gen)  # was: torch.randint(0, T, (B,))
        noisy = scheduler.add_noise(x0, noise, draw.t)
        pred = model(noisy, draw.t).sample
        if args.prediction == "epsilon":
            target = noise
        elif args.prediction == "v_prediction":
            target = scheduler.get_velocity(x0, noise, draw.t)
        else:
            target = x0
        per_sample = ((pred - target) ** 2).flatten(1).mean(1)  # [B]
        loss = (per_sample * weight_of(draw.t) * draw.weight).mean()

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if momentum is not None:
            momentum.step()
        sampler.observe(draw.t, per_sample.detach())  # every step: curricula pace themselves on the loss

        if (
            args.log_every and step % args.log_every == 0
        ):  # the loss is read here only: a read waits for the GPU
            if not math.isfinite(loss.item()):
                raise SystemExit(f"the loss became {loss.item()} at step {step}; lower --lr")
            extra = f" momentum={momentum.status()}" if momentum is not None else ""
            print(f"step {step:5d}  loss {loss.item():.4f}  sampler {sampler.status()}{extra}", flush=True)

    print(f"done: steps={args.steps}, final loss={loss.item():.6f}, sampler={sampler.status()}")
    return loss.item()


if __name__ == "__main__":
    main()
