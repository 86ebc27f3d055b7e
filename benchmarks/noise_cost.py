"""What a noise assignment costs per training step: ``draw(x0)`` of every assigner against the plain Gaussian
draw, at the digits batch (128 × 1×8×8) and at a latent batch (32 × 4×256×256, the latents of 2048-pixel images
in an SD-style autoencoder), and the side effect on the noise's norm (E‖ε‖²/D; 1 for N(0, I)).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/noise_cost.py [--device cuda]

Median of 5 timed draws after one warm-up (CUDA: synchronised, events). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from diffusion_curriculum import noise

ASSIGNERS = [
    ("gaussian", {}),
    ("knn", {"k": 2}),
    ("knn", {"k": 4}),
    ("knn", {"k": 8}),
    ("knn", {"k": 4, "metric": "angle"}),
    ("assignment", {}),
]
SHAPES = {"digits 128×1×8×8": (128, 1, 8, 8), "latents 32×4×256×256": (32, 4, 256, 256)}


def timed(fn, device: torch.device, rounds: int = 5) -> float:
    fn()
    times = []
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    print("| batch | noise | ms per draw | × gaussian | E‖ε‖²/D |")
    print("|---|---|---|---|---|")
    for label, shape in SHAPES.items():
        g = torch.Generator(device=device).manual_seed(0)
        x0 = (
            torch.rand(shape, generator=g, device=device) * 2 - 1
        ).contiguous()  # image-like values in [-1, 1]
        base = None
        for name, params in ASSIGNERS:
            a = noise.build(name, **params)
            ms = 1000 * timed(lambda a=a, x0=x0, g=g: a.draw(x0, generator=g), device)
            base = base or ms
            norm = a.draw(x0, generator=g).pow(2).mean().item()
            spec = name + "".join(f", {k}={v}" for k, v in params.items())
            print(f"| {label} | `{spec}` | {ms:.2f} | {ms / base:.2f} | {norm:.3f} |", flush=True)


if __name__ == "__main__":
    main()
