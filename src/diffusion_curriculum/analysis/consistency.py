"""The consistency phenomenon: independently trained diffusion models map the same noise to nearly the same sample.

Xu et al. 2024, "Towards Faster Training of Diffusion Models: An Inspiration of a Consistency Phenomenon"
(arXiv 2404.07946), §3: models differing in seed (or architecture) that start the stochastic DDPM sampler from
the same x_T and inject the same noise at every step produce near-identical samples; the agreement of their
noise predictions rises toward large t (docs/methods.md, "Analyses", consistency).

Reported here:

- paired distance d_pair = (1/n) Σ_i ‖x^A_i − x^B_i‖₂ (same initial and per-step noise, Ho et al. 2020 Alg. 2);
- unpaired distance d_unpair = (1/n) Σ_i ‖x^A_i − x^B_{π(i)}‖₂ with the fixed derangement π(i) = (i+1) mod n;
- ratio d_pair / d_unpair (0 = identical models; ≈ 1 = no more alike than unrelated samples);
- per t, on shared x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε for a batch of real x_0: the cosine similarity
  ⟨ε̂_A, ε̂_B⟩ / (‖ε̂_A‖‖ε̂_B‖) and the relative error ‖ε̂_A − ε̂_B‖ / ‖ε̂_B‖, each averaged over the batch
  (ε̂ = ``process.predict_eps`` of the network output, so any prediction type works).

The two models are trained here (``train`` subprocesses, seeds s and s+1, optional overrides for model B) or
loaded from two run directories (their newest usable checkpoint's EMA weights). DDPM needs a discrete process.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from . import write_table


def load_ema(run: str | Path):
    """(config, components, model with EMA weights, step) of a run directory's newest usable checkpoint."""
    from .. import checkpoint
    from ..evaluate import load_run
    from ..training import rundir

    run = Path(run)
    cfg, comps = load_run(run)
    ckpts = checkpoint.list_checkpoints(run / rundir.CHECKPOINTS)
    _, step = rundir.load_newest_ema(comps.model, ckpts, run / rundir.CHECKPOINTS)
    return cfg, comps, comps.model.eval(), step


def distances(xa: torch.Tensor, xb: torch.Tensor) -> dict[str, float]:
    """Mean paired and unpaired (derangement i → i+1 mod n) L2 distances and their ratio."""
    a, b = xa.flatten(1).double(), xb.flatten(1).double()
    n = a.shape[0]
    if n < 2:
        raise ValueError("need at least 2 samples for an unpaired distance")
    paired = float((a - b).norm(dim=1).mean())
    unpaired = float((a - b.roll(-1, 0)).norm(dim=1).mean())
    return {"paired_distance": paired, "unpaired_distance": unpaired, "ratio": paired / unpaired}


@torch.no_grad()
def shared_noise_samples(
    models, process, shape, n: int, *, prediction: str, seed: int, clip_x0=True
) -> list[torch.Tensor]:
    """DDPM ancestral samples of each model from the same x_T and the same per-step noise (generators seeded
    alike: :func:`generate.ddpm` draws the initial noise, then one draw per step); ``clip_x0`` as in
    :func:`generate.ddpm` (the runs' own data range, ``Components.clip``, when called from :func:`run`)."""
    from .. import generate

    return [
        generate.ddpm(
            m,
            process,
            (n, *shape),
            prediction=prediction,
            generator=torch.Generator().manual_seed(seed),
            clip_x0=clip_x0,
        )
        for m in models
    ]


@torch.no_grad()
def eps_agreement(
    model_a, model_b, process, x0: torch.Tensor, ts: list[int], *, prediction: str, seed: int = 0
) -> list[dict[str, float]]:
    """Per t: mean cosine similarity and mean relative error ‖ε̂_A − ε̂_B‖/‖ε̂_B‖ on shared x_t (module doc)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for t in ts:
        noise = torch.randn(x0.shape, generator=g)
        tb = torch.full((x0.shape[0],), int(t), dtype=torch.long)
        x_t = process.add_noise(x0, noise, tb)
        inp = process.model_input(x_t, tb)
        ea = process.predict_eps(model_a(*inp).float(), x_t, tb, prediction).flatten(1).double()
        eb = process.predict_eps(model_b(*inp).float(), x_t, tb, prediction).flatten(1).double()
        cos = torch.nn.functional.cosine_similarity(ea, eb, dim=1)
        rel = (ea - eb).norm(dim=1) / eb.norm(dim=1).clamp_min(1e-12)
        rows.append({"t": int(t), "cosine": float(cos.mean()), "rel_error": float(rel.mean())})
    return rows


def plot(xa, xb, rows, dist, path: Path) -> None:
    """Sample grids of A and B from the same noise, and ε-agreement vs t."""
    from .. import viz

    plt, fig, ax = viz.figure(1, 3, size=(14.0, 4.4))
    for a, x, name in ((ax[0, 0], xa, "model A"), (ax[0, 1], xb, "model B (same noise)")):
        if x.dim() == 2:
            a.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=3)
        else:
            g = viz.to_image_grid(x[:64])
            a.imshow(g, cmap="gray" if g.ndim == 2 else None, interpolation="nearest")
            a.axis("off")
        a.set_title(name)
    c = ax[0, 2]
    t = [r["t"] for r in rows]
    c.plot(t, [r["cosine"] for r in rows], "o-", ms=3, label="cosine(ε̂_A, ε̂_B)")
    c.plot(t, [r["rel_error"] for r in rows], "s--", ms=3, label="‖ε̂_A − ε̂_B‖ / ‖ε̂_B‖")
    c.set_xlabel("t")
    c.set_title(f"agreement vs t (sample distance ratio {dist['ratio']:.3f})")
    c.legend(fontsize=8)
    viz.save_figure(plt, fig, path)


def run(
    cfg: dict | None,
    out: str | Path,
    *,
    checkpoints: list[str] | None = None,
    preset: str | None = None,
    config_file: str | None = None,
    overrides: list[str] = (),
    b_overrides: list[str] = (),
    seed_offset: int = 1,
    n: int = 64,
    n_real: int = 256,
    t_points: int = 20,
    sample_seed: int = 0,
    jobs: int | None = None,
    log=None,
) -> dict[str, Any]:
    """Train (or load) models A and B, then write ``consistency.csv``/``.json`` (per-t agreement; the sample
    distances in the JSON) and ``consistency.png`` into ``out``."""
    from .. import config, sweep
    from .difficulty import QUIET

    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    out = Path(out)
    if n < 2 or n_real < 1 or t_points < 1:
        raise ConfigError("--n must be ≥ 2, --n-real and --t-points ≥ 1")
    t0 = time.time()
    if checkpoints:
        if len(checkpoints) != 2:
            raise ConfigError(f"--checkpoints takes two run directories, got {len(checkpoints)}")
        runs = [Path(c) for c in checkpoints]
    else:
        seed = cfg["seed"]
        ov_a = [*QUIET, *overrides, f"seed={seed}"]
        ov_b = [*QUIET, *overrides, *b_overrides, f"seed={seed + seed_offset}"]
        for ov in (ov_a, ov_b):
            config.resolve(preset, config_file, ov)
        runs = [out / "model_a", out / "model_b"]
        plans = [
            sweep.RunPlan("model_a", runs[0], cfg["steps"], preset, config_file, tuple(ov_a)),
            sweep.RunPlan("model_b", runs[1], cfg["steps"], preset, config_file, tuple(ov_b)),
        ]
        failures = sweep.run(plans, jobs=jobs, say=say, serial_in_process=True)
        if failures:
            raise ConfigError(f"training failed: {failures}; see {out}/model_*/train.log")
    (cfg_a, comps_a, ma, step_a), (cfg_b, comps_b, mb, step_b) = load_ema(runs[0]), load_ema(runs[1])
    proc = comps_a.process
    if proc.continuous or comps_b.process.continuous:
        raise ConfigError("the consistency analysis samples with DDPM and needs a discrete process")
    if not torch.equal(proc.alphas_cumprod, comps_b.process.alphas_cumprod):
        raise ConfigError("models A and B use different noise processes; they must share one")
    if comps_a.dataset.shape != comps_b.dataset.shape:
        raise ConfigError("models A and B were trained on data of different shapes")
    pa, pb = cfg_a["prediction"], cfg_b["prediction"]
    if pa != pb:
        raise ConfigError("models A and B use different prediction types; compare like with like")
    shape = comps_a.dataset.shape
    xa, xb = (
        shared_noise_samples([ma], proc, shape, n, prediction=pa, seed=sample_seed, clip_x0=comps_a.clip)[0],
        shared_noise_samples([mb], proc, shape, n, prediction=pb, seed=sample_seed, clip_x0=comps_b.clip)[0],
    )
    dist = distances(xa, xb)
    ts = sorted({int(round(v)) for v in np.linspace(0, proc.T - 1, t_points)})
    x0 = comps_a.dataset.rows(slice(0, n_real))
    rows = eps_agreement(ma, mb, proc, x0, ts, prediction=pa, seed=sample_seed)
    meta = {
        "analysis": "consistency",
        "runs": [str(r) for r in runs],
        "steps": [step_a, step_b],
        "n": n,
        "n_real": len(x0),
        **dist,
        "time_s": time.time() - t0,
    }
    write_table(out, "consistency", rows, meta)
    plot(xa, xb, rows, dist, out / "consistency.png")
    return {**meta, "rows": rows}
