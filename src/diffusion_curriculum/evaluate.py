"""Evaluate a finished (or running) training run offline: every kept checkpoint's EMA model, sampled and measured
with the same metrics as the trainer's periodic evaluation, at any sample count.

The trainer evaluates with ``eval.samples`` samples; a Fréchet distance from few samples is dominated by its
finite-sample bias (on digits, 64 *real* images score FD ≈ 30 against the full set, 1000 score ≈ 1), so runs
evaluated cheaply during training can be re-measured here afterwards. Results go to
``<run>/eval-n<N>.jsonl`` (one record per checkpoint step, written atomically; ``compare --eval-file`` reads it).

    diffusion-curriculum evaluate --run runs/digits-XXXX --samples 1000
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .checks import atomic_write, is_int
from .errors import ConfigError


def load_run(run: str | Path) -> tuple[dict, Any]:
    """(validated config, components built from it) of a run directory."""
    from .training import build_components, rundir

    run = Path(run)
    if not (run / rundir.CONFIG).is_file():
        raise ConfigError(f"{str(run)!r} is not a run directory (no config.yaml)")
    cfg = rundir.load_config(run)
    return cfg, build_components(cfg)


def load_ema(model: torch.nn.Module, ckpt: str | Path) -> int:
    """Load a checkpoint's EMA weights into ``model``; return its step. Raises ``CheckpointError`` when the
    checkpoint is unreadable or does not fit the model (:func:`diffusion_curriculum.training.rundir.load_ema_weights`)."""
    from .training import rundir

    return rundir.load_ema_weights(model, ckpt)


def eval_file_name(samples: int, guidance: float | None = None) -> str:
    """The file a run's offline evaluation with ``samples`` samples is written to; ``guidance``: the scale of
    an evaluation at a guidance other than the run's own ``eval.guidance`` (``eval-n<N>-w<guidance>.jsonl``)."""
    return f"eval-n{samples}.jsonl" if guidance is None else f"eval-n{samples}-w{guidance:g}.jsonl"


def evaluate_run(
    run: str | Path,
    *,
    samples: int | None = None,
    inception_weights: str | None = None,
    device: str = "cpu",
    guidance: float | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Measure the EMA model of every kept checkpoint of ``run`` (oldest first) with ``samples`` samples (default:
    the run's ``eval.samples``), drawn as the trainer draws them (its ``eval`` method, steps, noise seed and seeding);
    write ``<run>/eval-n<samples>.jsonl`` and return its records ``{"step", "samples", <metric>: value}``.
    An unreadable checkpoint is skipped with a message; when none is readable, a ``CheckpointError`` (nothing is
    written).

    A class-conditional run is sampled class-balanced (:func:`~diffusion_curriculum.guidance.balanced_labels`) at
    ``guidance`` (default: its ``eval.guidance``; another scale writes ``eval-n<N>-w<guidance>.jsonl``), and
    its records add ``guidance`` and ``accuracy`` (:meth:`~diffusion_curriculum.metrics.Evaluator.accuracy`);
    ``guidance`` on an unconditional run is a ``ValueError`` in one sentence."""
    from . import checkpoint, generate, metrics
    from .guidance import run_labels

    if samples is not None and not (is_int(samples) and samples >= 2):
        raise ConfigError(f"--samples {samples!r} is invalid; allowed: an integer >= 2")
    run = Path(run)
    cfg, comps = load_run(run)
    ec, mc = cfg["eval"], cfg["metrics"]
    n = samples or ec["samples"]
    cond = run_labels(comps.num_classes, n, None, guidance, ec["guidance"])
    other = guidance is not None and float(guidance) != ec["guidance"]
    ckpts = list(reversed(checkpoint.list_checkpoints(run / "checkpoints")))
    if not ckpts:
        raise checkpoint.CheckpointError(f"no checkpoint under {str(run / 'checkpoints')!r}")
    dev = torch.device(device)
    evaluator = metrics.Evaluator(
        comps.dataset,
        seed=0,  # the trainer's choice: the feature net's seed is fixed so numbers compare across runs
        n_real=mc["n_real"],
        inception_weights=inception_weights or mc["inception_weights"],
        device=dev,
    )
    model = comps.model.to(dev).eval()
    records = []
    for ck in ckpts:
        try:
            step = load_ema(model, ck)
        except checkpoint.CheckpointError as e:
            log(f"warning: skipped {ck.name}: {e}")
            continue
        x = generate.sample(
            model,
            comps.process,
            n,
            comps.dataset.shape,
            method=ec["method"],
            steps=generate.config_steps(comps.process, ec["method"], ec["steps"]),
            eta=ec["eta"],
            prediction=cfg["prediction"],
            seed=ec["seed"],
            seeding=ec["seeding"],
            device=dev,
            batch_size=ec["batch_size"],
            clip_x0=comps.clip,
            **cond,
        )
        scale = {"guidance": cond["guidance"]} if cond else {}
        labels = cond.get("labels") if evaluator.has_accuracy else None
        rec = {"step": step, "samples": n, **scale, **evaluator(x, labels=labels)}
        records.append(rec)
        log(json.dumps(rec))
    if not records:  # every checkpoint was unreadable: nothing measured, nothing written
        raise checkpoint.CheckpointError(
            f"none of the {len(ckpts)} checkpoints under {str(run / 'checkpoints')!r} is usable (each is named "
            "above); nothing was evaluated"
        )
    atomic_write(
        run / eval_file_name(n, cond["guidance"] if other else None),
        "".join(json.dumps(r) + "\n" for r in records),
    )
    return records
