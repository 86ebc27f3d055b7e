"""How far each noise level is from solved: a run's loss per noise-level bucket against the exact optimal loss of its
training set, at each kept checkpoint (``diffusion-curriculum analyze optimal-loss --run DIR``).

The run's fixed validation set (:mod:`~diffusion_curriculum.validation`, drawn from the *training* data here even
when the run holds samples out: only there is the optimum a floor) is scored with the EMA weights of each
checkpoint; J*(t) per bucket is :func:`~diffusion_curriculum.optimal_loss.floor`; the excess loss is the model's
loss − J*. This is the convergence-per-noise-level analysis of Kim et al. 2024 ("Denoising Task Difficulty-based
Curriculum for Training Diffusion Models", arXiv 2403.10348, §3) measured without training one model per
interval and without the evaluation noise of a fresh draw: their finding is that the noisy levels converge faster.
Here "converged" is the excess falling towards zero, and :func:`run` reports per bucket the share of the first
checkpoint's excess still left at the last (``left``; smaller: converged further) and the share of the loss that
is excess at each checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint, noise_levels, optimal_loss, validation
from ..errors import ConfigError
from ..loss import DenoisingLoss
from ..training import build_components, rundir
from . import write_table

__all__ = ["run"]


def _checkpoints(run_dir: Path, steps: list[int] | None) -> list[tuple[int, Path]]:
    """The run's checkpoints, oldest first, as (step, path); only ``steps`` when given (each must exist)."""
    found = {int(p.name.split("_")[-1]): p for p in checkpoint.list_checkpoints(run_dir / "checkpoints")}
    if not found:
        raise ConfigError(
            f"run {str(run_dir)!r} has no checkpoints to analyse; train it with checkpoint_every > 0"
        )
    if steps:
        missing = [s for s in steps if s not in found]
        if missing:
            raise ConfigError(
                f"--steps {','.join(map(str, missing))}: run {str(run_dir)!r} has no checkpoint there; it keeps "
                f"{', '.join(map(str, sorted(found)))}"
            )
        return [(s, found[s]) for s in sorted(steps)]
    return sorted(found.items())


def run(
    run_dir: str | os.PathLike, out: str | os.PathLike, *, steps: list[int] | None = None
) -> dict[str, Any]:
    """Score every kept checkpoint of ``run_dir`` (or those at ``steps``) per bucket against J*; write
    ``optimal-loss.csv/.json/.png`` into ``out`` and return ``{"rows", "steps", "on"}`` (a row per bucket:
    ``bucket``, ``low``/``high`` edges, ``optimal``, ``loss@S``, ``excess@S`` per step S, and ``left``)."""
    run_dir, out = Path(run_dir), Path(out)
    cfg = rundir.load_config(run_dir)
    c = build_components(cfg)
    ckpts = _checkpoints(run_dir, steps)
    ec = cfg["eval"]
    # the floor holds only on the training samples: the set is drawn from them (data=raw keeps the codes)
    train_only = dataclasses.replace(c.dataset, data=c.dataset.raw, val_data=None, val_labels=None)
    vset = validation.build(
        train_only,
        c.process,
        buckets=ec["val_buckets"],
        per_bucket=ec["val_per_bucket"] or 32,
        seed=ec["seed"],
    )
    conditional = bool(cfg["cond"]["enabled"])
    labels = c.dataset.labels if conditional else None
    floor = validation.bucket_means(
        optimal_loss.floor(c.process, cfg["prediction"], c.dataset.data, vset, labels), vset
    )
    loss = DenoisingLoss(c.process, cfg["prediction"])
    model = c.model.eval()
    edges, unit = noise_levels.bucket_edges(c.process, vset.buckets)
    rows = [
        {"bucket": k, "low": edges[k], "high": edges[k + 1], "optimal": floor[k]} for k in range(vset.buckets)
    ]
    for step, path in ckpts:
        rundir.load_ema_weights(model, path)
        with torch.no_grad():
            pred, _ = validation.scores(
                loss, model, vset, batch_size=ec["batch_size"], conditional=conditional
            )
        for row, value in zip(rows, validation.bucket_means(pred, vset)):
            row[f"loss@{step}"] = value
            row[f"excess@{step}"] = value - row["optimal"]
    first, last = ckpts[0][0], ckpts[-1][0]
    for row in rows:
        e0 = row[f"excess@{first}"]
        row["left"] = row[f"excess@{last}"] / e0 if e0 > 0 else None
    meta = {"run": str(run_dir), "unit": unit, "steps": [s for s, _ in ckpts], "on": vset.on}
    write_table(out, "optimal-loss", rows, meta)
    _plot(rows, [s for s, _ in ckpts], unit, out / "optimal-loss.png")
    return {"rows": rows, "steps": meta["steps"], "on": vset.on}


def _plot(rows: list[dict], steps: list[int], unit: str, path: Path) -> None:
    """Excess loss per bucket over the checkpoints (log scale), one line per bucket, coloured noisy to clean."""
    from ..viz import figure, save_figure

    plt, fig, ax = figure(size=(7.0, 4.4))
    a = ax[0, 0]
    cmap = plt.get_cmap("viridis")
    for i, row in enumerate(rows):
        ys = [max(row[f"excess@{s}"], 1e-8) for s in steps]
        a.plot(steps, ys, color=cmap(i / max(len(rows) - 1, 1)), label=f"{row['low']:.3g}-{row['high']:.3g}")
    a.set_yscale("log")
    a.set_xlabel("step")
    a.set_ylabel("loss - optimal loss (training data)")
    a.set_title(f"excess loss per noise-level bucket ({unit}; light = noisy)")
    a.legend(fontsize=5, ncol=2)
    save_figure(plt, fig, path)
