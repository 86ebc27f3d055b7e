"""An EDM training loop (Karras et al. 2022) with a noise-level curriculum dropped in.

Shows the continuous-σ use: ``EDMProcess`` holds EDM's constants, a σ-drawing sampler replaces
``sigma = (randn * P_std + P_mean).exp()`` (``--sampler``: ``clts`` by default, which starts as EDM's own
log-normal and shifts mass toward lower noise as training goes on; ``lognormal`` is EDM's plain draw; ``ddc`` and
``uniform`` work too), and the ``edm`` weighting supplies λ(σ) = (σ² + σ_d²)/(σ σ_d)². The network is wrapped in
EDM's preconditioning written out as in the paper (Table 1): D(x; σ) = c_skip·x + c_out·F(c_in·x, c_noise).

Data: 2-D points from 8 Gaussians, generated in-script; the denoiser is the library's small residual MLP. At the
end the script checks the identity the library relies on: λ(σ)·‖D − x0‖² equals the plain squared error of F
against ``process.target(x0, n, σ, "v")`` (EDM's F-target). Runs on a CPU in seconds::

    python examples/edm_loop.py --steps 500
    python examples/edm_loop.py --sampler lognormal
"""

from __future__ import annotations

import argparse
import math

import torch

from diffusion_curriculum import models, timesteps, weighting
from diffusion_curriculum.data import Batcher, load
from diffusion_curriculum.process import EDMProcess

# samplers that can draw a continuous σ for an EDM process
SIGMA_SAMPLERS = sorted(n for n, cls in timesteps.REGISTRY.items() if "continuous" in cls.supports)


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=500, help="optimizer steps")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--hidden", type=int, default=128, help="MLP width")
    ap.add_argument("--depth", type=int, default=3, help="MLP residual blocks")
    ap.add_argument("--sampler", default="clts", choices=SIGMA_SAMPLERS)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    dataset = load("8gaussians", n=8192, seed=args.seed)
    batches = Batcher(dataset, args.batch_size, generator_seed=args.seed)

    # EDM's training constants (P_mean, P_std, sigma_min/max at their defaults); σ_data measured on the data
    process = EDMProcess(sigma_data=round(float(dataset.data.std()), 3))
    sampler = timesteps.build(args.sampler, process, total_steps=args.steps)
    lam = weighting.build("edm", process, "x0")  # λ(σ) on ‖D − x0‖²

    model = models.build("mlp", (2,), hidden=args.hidden, depth=args.depth, time_dim=64)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D(x; σ) = c_skip·x + c_out·F(c_in·x, c_noise) (Karras et al. 2022, eq. 7 and Table 1)."""
        c_skip, c_out, c_in, c_noise = (c[:, None] for c in process.precondition(sigma))
        return c_skip * x + c_out * model(c_in * x, c_noise[:, 0])

    loss = torch.zeros(())
    for step in range(1, args.steps + 1):
        x0 = batches.next()  # [B, 2]
        draw = sampler.sample(x0.shape[0], generator=gen)  # draw.t is σ (float) for an EDM process
        sigma = draw.t
        n = torch.randn(x0.shape, generator=gen)
        x = process.add_noise(x0, n, sigma)  # x0 + σ·n
        per_sample = ((denoise(x, sigma) - x0) ** 2).mean(1)  # [B]
        loss = (lam(sigma) * draw.weight * per_sample).mean()

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sampler.observe(sigma, per_sample.detach())

        if not math.isfinite(loss.item()):
            raise SystemExit(f"the loss became {loss.item()} at step {step}; lower --lr")
        if args.log_every and step % args.log_every == 0:
            print(f"step {step:5d}  loss {loss.item():.4f}  sampler {sampler.status()}", flush=True)

    # The same loss, written on EDM's F-target: λ(σ)·‖D − x0‖² = ‖F − F_target‖² (λ·c_out² = 1).
    with torch.no_grad():
        _, _, c_in, c_noise = process.precondition(sigma)
        f_loss = ((model(c_in[:, None] * x, c_noise) - process.target(x0, n, sigma, "v", x_t=x)) ** 2).mean(1)
        d_loss = lam(sigma) * ((denoise(x, sigma) - x0) ** 2).mean(1)
    ok = torch.allclose(f_loss, d_loss, rtol=1e-3, atol=1e-5)
    print(f"check: lambda(sigma)*|D - x0|^2 == |F - F_target|^2: {ok}")
    if not ok:
        raise SystemExit("the EDM-weighted loss and the F-target loss disagree")
    print(f"done: steps={args.steps}, final loss={loss.item():.6f}, sampler={sampler.status()}")
    return loss.item()


if __name__ == "__main__":
    main()
