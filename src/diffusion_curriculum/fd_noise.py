"""The resolution of a sample-based quality metric: the same checkpoint scored with two sample seeds.

A Fréchet distance (or SWD, MMD) of N generated samples depends on which N samples were drawn; how much is
measured here by scoring a run's newest checkpoint a second time with the evaluation's noise seed ``eval.seed +
1``, at the same sample count, exactly as ``diffusion-curriculum evaluate`` scores it (through
:func:`diffusion_curriculum.evaluate.evaluate_run` on a view of the run whose ``config.yaml`` differs only in
``eval.seed``). The first score is the run's own at that step (the trainer's in-run evaluation, or the offline
one of ``compare --eval-samples``, which equal what ``evaluate`` gives: ``tests/test_evaluate.py``). The mean
absolute difference over checkpoints, |Δ|, is the size of a quality difference below which two runs cannot be
told apart by this metric at this sample count. Each measurement is kept in ``<run>/`` :func:`noise_file_name`
(reused while newer than the run's newest checkpoint).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

import yaml

from .checks import atomic_write

#: the quality keys that depend on the drawn samples (and so get a noise measurement)
SAMPLE_KEYS = ("fd", "fid", "swd", "mmd")


def noise_file_name(samples: int | None) -> str:
    """``fd-noise-n<N>.json`` for a measurement at N samples (``compare --eval-samples N``), or
    ``fd-noise-in-run.json`` (``samples`` None) for one at the run's own ``eval.samples``."""
    return "fd-noise-in-run.json" if samples is None else f"fd-noise-n{samples}.json"


def score_with_seed(run: str | Path, seed: int, samples: int | None = None) -> dict[str, Any]:
    """The record ``evaluate`` writes for the newest checkpoint of ``run``, sampled with noise seed ``seed``
    instead of the run's ``eval.seed`` (``samples`` default: the run's ``eval.samples``)."""
    from . import checkpoint, evaluate
    from .config import load_yaml
    from .training import rundir

    run = Path(run)
    ckpts = checkpoint.list_checkpoints(run / rundir.CHECKPOINTS)
    if not ckpts:
        raise checkpoint.CheckpointError(f"no checkpoint under {str(run / rundir.CHECKPOINTS)!r}")
    with tempfile.TemporaryDirectory(prefix="fd-noise-") as tmp:
        view = Path(tmp)
        cfg = load_yaml(run / rundir.CONFIG)
        cfg.setdefault("eval", {})["seed"] = int(seed)
        (view / rundir.CONFIG).write_text(yaml.safe_dump(cfg, sort_keys=False))
        (view / rundir.CHECKPOINTS).mkdir()
        try:
            os.symlink(ckpts[0].resolve(), view / rundir.CHECKPOINTS / ckpts[0].name)
        except OSError:  # no symbolic links here: a copy
            shutil.copytree(ckpts[0], view / rundir.CHECKPOINTS / ckpts[0].name)
        return evaluate.evaluate_run(view, samples=samples, log=lambda m: None)[-1]


def measure(run: str | Path, key: str, curve: list[tuple[int, float]], samples: int | None, say=None) -> dict:
    """The run's newest checkpoint scored with its ``eval.seed`` and with ``eval.seed + 1`` for ``key``:
    ``{"key", "step", "samples", "seeds": [a, b], "values": [x_a, x_b]}``. The first value is the ``curve``'s
    at that step when it has one (the run's own score), else scored now; read from the run's
    :func:`noise_file_name` when that is newer than the newest checkpoint, else written there."""
    from . import checkpoint
    from .training import rundir

    run = Path(run)
    path = run / noise_file_name(samples)
    ckpts = checkpoint.list_checkpoints(run / rundir.CHECKPOINTS)
    if path.is_file() and ckpts and path.stat().st_mtime >= ckpts[0].stat().st_mtime:
        kept = json.loads(path.read_text())
        if kept.get("key") == key:
            return kept
    seed = rundir.load_config(run)["eval"]["seed"]
    (say or (lambda m: None))(f"scoring the final checkpoint of {run} with sample seed {seed + 1}")
    other = score_with_seed(run, seed + 1, samples)
    own = dict(curve).get(other["step"])
    if own is None:
        own = score_with_seed(run, seed, samples)[key]
    out = {"key": key, "step": other["step"], "samples": other["samples"], "seeds": [seed, seed + 1]}
    out["values"] = [float(own), float(other[key])]
    atomic_write(path, json.dumps(out) + "\n")
    return out


def summary(measurements: list[dict]) -> dict[str, Any] | None:
    """``{"key", "mean_abs_diff", "max_abs_diff", "n", "samples"}`` over ``measurements`` (of
    :func:`measure`), or ``None`` for none."""
    if not measurements:
        return None
    diffs = [abs(m["values"][1] - m["values"][0]) for m in measurements]
    return {
        "key": measurements[0]["key"],
        "mean_abs_diff": statistics.fmean(diffs),
        "max_abs_diff": max(diffs),
        "n": len(diffs),
        "samples": sorted({m["samples"] for m in measurements}),
    }


def noise_line(noise: dict | None, key: str = "fd", why: str = "") -> str:
    """The line printed under a comparison's tables: the mean |Δ| of :func:`summary` ``noise``, or that the
    noise is unknown (``why``: the reason)."""
    name = (noise or {}).get("key", key).upper()
    if not noise:
        return f"{name} noise: unknown{f' ({why})' if why else ''}."
    n, samples = noise["n"], "/".join(map(str, noise["samples"]))
    return (
        f"{name} noise: the same checkpoint scored with two sample seeds differs by {noise['mean_abs_diff']:.3g} "
        f"(mean |Δ| over {n} checkpoint{'s' if n != 1 else ''}, largest {noise['max_abs_diff']:.3g}; "
        f"{samples} samples); a difference of {name} below it is not resolved by this metric."
    )
