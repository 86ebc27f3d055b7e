"""A class-conditional diffusers training loop with a timestep curriculum dropped in, sampled with guidance.

The diffusers loop of ``diffusers_loop.py`` with a class-conditional ``UNet2DModel(num_class_embeds=...)``: the
timestep strategy (``--sampler``, DDC by default) is built and used exactly as for an unconditional model — it
draws noise levels and watches per-sample losses, and never sees the labels — so a curriculum needs nothing new
for conditional models. The labels come from the library's Batcher with the images; each is replaced by the
null class (index 10) with probability ``--drop-prob`` (Ho & Salimans 2022, Algorithm 1) from a generator of its
own. At the end the library's DDIM sampler generates a class-balanced batch with classifier-free guidance
(``--guidance``: out(x, ∅) + w·(out(x, y) − out(x, ∅)) in one batched forward)::

    x0, y = batches.next_labelled()                  # images and their labels, deterministic and resumable
    y = torch.where(drop, null_class, y)             # label dropout, its own random stream
    pred = model(noisy, draw.t, class_labels=y).sample

Data: scikit-learn's bundled 8x8 digits (no download). Runs on a CPU in about a minute at the defaults::

    python examples/diffusers_cond_loop.py --steps 300 --guidance 2.0
"""

from __future__ import annotations

import argparse
import math

import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffusion_curriculum import generate, timesteps
from diffusion_curriculum.data import Batcher, load
from diffusion_curriculum.device import to_device
from diffusion_curriculum.guidance import balanced_labels
from diffusion_curriculum.process import DiscreteProcess

NUM_CLASSES = 10  # the digits 0..9; index 10 is the null class ("no label") of classifier-free guidance


class WithLabels(torch.nn.Module):
    """The diffusers UNet as the ``net(x, t, y)`` the library's guidance calls; ``null_class`` says which label
    means "no label"."""

    null_class = NUM_CLASSES

    def __init__(self, unet: UNet2DModel):
        super().__init__()
        self.unet = unet

    def forward(self, x, t, y):
        return self.unet(x, t, class_labels=y).sample


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--channels", type=int, default=16, help="UNet width (block_out_channels = c, 2c)")
    ap.add_argument("--timesteps", type=int, default=1000, help="the scheduler's num_train_timesteps")
    ap.add_argument("--sampler", default="ddc", choices=timesteps.names())
    ap.add_argument("--drop-prob", type=float, default=0.1, help="label dropout probability")
    ap.add_argument("--guidance", type=float, default=2.0, help="guidance scale w of the final samples")
    ap.add_argument("--samples", type=int, default=20, help="class-balanced samples generated at the end")
    ap.add_argument("--sample-steps", type=int, default=20, help="DDIM steps of the final samples")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(args.seed)  # timesteps: drawn on the CPU, copied over without a wait
    noise_gen = torch.Generator(device).manual_seed(args.seed + 2)  # noise: drawn where it is used
    drop_gen = torch.Generator().manual_seed(args.seed + 1)  # label dropout: a stream of its own

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
        num_class_embeds=NUM_CLASSES + 1,  # one more for the null class
    ).to(device)
    scheduler = DDPMScheduler(num_train_timesteps=args.timesteps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)

    # --- the library: the scheduler's own alphas_cumprod and a timestep sampler, as for any model ---------------
    process = DiscreteProcess.from_alphas_cumprod(scheduler.alphas_cumprod)
    sampler = timesteps.build(args.sampler, process, total_steps=args.steps)

    batches = Batcher(load("digits"), args.batch_size, generator_seed=args.seed, device=device)
    loss = torch.zeros(())
    for step in range(1, args.steps + 1):
        x0, y = batches.next_labelled()  # [B, 1, 8, 8] in [-1, 1], labels [B]
        drop = to_device(torch.rand(y.shape, generator=drop_gen) < args.drop_prob, device)  # pinned, no wait
        y = torch.where(drop, torch.full_like(y, NUM_CLASSES), y)
        noise = torch.randn(x0.shape, generator=noise_gen, device=device)
        draw = sampler.sample(x0.shape[0], device=device, generator=gen)  # was: torch.randint(0, T, (B,))
        noisy = scheduler.add_noise(x0, noise, draw.t)
        pred = model(noisy, draw.t, class_labels=y).sample
        per_sample = ((pred - noise) ** 2).flatten(1).mean(1)  # [B]
        loss = (per_sample * draw.weight).mean()

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sampler.observe(draw.t, per_sample.detach())  # the curriculum paces itself on the loss, labels or not

        if (
            args.log_every and step % args.log_every == 0
        ):  # the loss is read here only: a read waits for the GPU
            if not math.isfinite(loss.item()):
                raise SystemExit(f"the loss became {loss.item()} at step {step}; lower --lr")
            print(f"step {step:5d}  loss {loss.item():.4f}  sampler {sampler.status()}", flush=True)

    print(f"done: steps={args.steps}, final loss={loss.item():.6f}, sampler={sampler.status()}")
    labels = balanced_labels(args.samples, NUM_CLASSES)
    x = generate.sample(
        WithLabels(model),
        process,
        args.samples,
        (1, 8, 8),
        method="ddim",
        steps=args.sample_steps,
        device=device,
        labels=labels,
        guidance=args.guidance,
    )
    print(
        f"generated {x.shape[0]} samples of classes {sorted(set(labels.tolist()))} at guidance {args.guidance:g}, "
        f"mean {x.mean().item():.4f}, std {x.std().item():.4f}"
    )
    return loss.item()


if __name__ == "__main__":
    main()
