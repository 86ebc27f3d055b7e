"""What the trainer does around its steps, as hooks: the drawn-noise histogram, the JSONL log, the experiment
trackers (TensorBoard, Weights & Biases), the progress bar and Ctrl-C / SIGTERM.

A hook subclasses :class:`Hook` and overrides what it needs; the trainer calls, in its hooks' order,

* ``on_step(trainer, t, per_sample)`` after every step (its noise levels and per-sample losses, on the
  device: what a recorder of per-noise-level losses needs; a step whose loss was not finite too, whose
  gradients the trainer zeroed), then ``on_iteration(trainer)``; neither may read device data on the host
  (docs/design.md, "The device contract");
* ``on_eval(trainer, samples, step) -> dict`` at every evaluation (rank 0 only), its numbers merged into the
  evaluation's record; ``on_record(trainer, rec)`` for every record logged (rank 0 only); ``close()`` at the
  end of the run.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from .. import noise_levels
from ..errors import ConfigError

#: bins of the drawn-noise-level histogram logged at every evaluation
T_HIST_BINS = 20


class Hook:
    """Base class of the trainer's hooks; every method does nothing."""

    def on_step(self, trainer: Any, t: torch.Tensor, per_sample: torch.Tensor) -> None:
        """After every step: its noise levels ``t`` and per-sample losses ``per_sample`` (detached, on the device)."""

    def on_iteration(self, trainer: Any) -> None:
        """After every step, after :meth:`on_step`."""

    def on_eval(self, trainer: Any, samples: torch.Tensor, step: int) -> dict[str, Any]:
        """At an evaluation (rank 0 only), with the EMA model's ``samples``: numbers for its record."""
        return {}

    def on_record(self, trainer: Any, rec: dict[str, Any]) -> None:
        """A record was logged to ``metrics.jsonl`` (rank 0 only)."""

    def close(self) -> None:
        """The run is over."""


class NoiseHistogram(Hook):
    """Counts of the drawn noise levels since the last evaluation, in :data:`T_HIST_BINS` bins: t·bins/T for a
    discrete process, ln σ over [ln σ_min, ln σ_max] for an EDM process (draws outside are put in the end bins), t
    for a flow process — the buckets of :mod:`~diffusion_curriculum.noise_levels`.
    """

    def __init__(self, process: Any, device: torch.device, bins: int = T_HIST_BINS):
        self.process, self.bins = process, bins
        #: the counts (Long, on the training device)
        self.counts = torch.zeros(bins, dtype=torch.long, device=device)

    def bin_of(self, t: torch.Tensor) -> torch.Tensor:
        """The histogram bin of each noise level in ``t`` (:func:`noise_levels.bucket`)."""
        return noise_levels.bucket(self.process, t, self.bins)

    def on_step(self, trainer: Any, t: torch.Tensor, per_sample: torch.Tensor) -> None:
        """Count the step's draws (``index_add_`` on the device: no host read, and integer sums are exact in any
        order)."""
        b = self.bin_of(t).to(self.counts.device)
        self.counts.index_add_(0, b, torch.ones_like(b))

    def record(self) -> dict[str, Any]:
        """``{"t_hist", "t_hist_edges", "t_hist_unit"}`` for an evaluation's log line; the counts restart."""
        edges, unit = noise_levels.bucket_edges(self.process, self.bins)
        rec = {"t_hist": self.counts.tolist(), "t_hist_edges": edges, "t_hist_unit": unit}
        self.counts.zero_()
        return rec


class JsonlLog(Hook):
    """Appends every record to the run's ``metrics.jsonl``."""

    def __init__(self, rundir: Any):
        self.rundir = rundir

    def on_record(self, trainer: Any, rec: dict[str, Any]) -> None:
        """One JSON line per record."""
        self.rundir.append(rec)


def logger_names(cfg: dict) -> list[str]:
    """The trackers a config asks for: ``logger`` (``none``, one name of ``config.LOGGERS`` or a list of them),
    plus TensorBoard when the older spelling ``tensorboard: true`` is set."""
    chosen = cfg["logger"]
    names = [] if chosen == "none" else [chosen] if isinstance(chosen, str) else list(dict.fromkeys(chosen))
    if cfg["tensorboard"] and "tensorboard" not in names:
        names.append("tensorboard")
    return names


def check_loggers(cfg: dict) -> None:
    """A ConfigError naming the extra to install when a chosen tracker's package is missing (checked before
    anything is written)."""
    for name in logger_names(cfg):
        if importlib.util.find_spec(name) is None:
            key = (
                "tensorboard=true" if name == "tensorboard" and cfg["logger"] == "none" else f"logger={name}"
            )
            raise ConfigError(
                f"{key} needs the {name} package, which is not installed: pip install 'diffusion-curriculum[{name}]'"
            )


def loggers(cfg: dict, out: Path, run_id: str) -> list[Hook]:
    """One hook per tracker :func:`logger_names` chooses, writing beside (or, for W&B, about) the run ``out``;
    ``run_id`` is the run's tracker id (:meth:`~.rundir.RunDir.run_id`)."""
    make = {"tensorboard": lambda: TensorBoard(out / "tensorboard"), "wandb": lambda: WandB(out, cfg, run_id)}
    return [make[name]() for name in logger_names(cfg)]


def scalars(rec: dict[str, Any]) -> dict[str, float]:
    """The numbers of a record a tracker logs as scalars: every top-level number but ``step`` (booleans and
    lists left out) and the numbers one mapping down, as ``"sampler/stage"``."""
    out: dict[str, float] = {}
    for k, v in rec.items():
        items = v.items() if isinstance(v, dict) else [(None, v)]
        for sub, x in items:
            if k != "step" and isinstance(x, (int, float)) and not isinstance(x, bool):
                out[k if sub is None else f"{k}/{sub}"] = x
    return out


class TensorBoard(Hook):
    """Every number of every record (:func:`scalars`) as a TensorBoard scalar at the record's step
    (``logger: tensorboard``, or ``tensorboard: true``)."""

    def __init__(self, logdir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(logdir))

    def on_record(self, trainer: Any, rec: dict[str, Any]) -> None:
        """Add the record's numbers."""
        for k, v in scalars(rec).items():
            self.writer.add_scalar(k, v, rec["step"])

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


class WandB(Hook):
    """Weights & Biases (``logger: wandb``, extra ``wandb``): the same scalars as TensorBoard (:func:`scalars`)
    at each record's step, the sample grid (or scatter plot) of every evaluation as ``samples`` and its
    drawn-noise-level histogram as ``t_hist``; the resolved config is the W&B run's config.

    The project is ``$WANDB_PROJECT`` (default ``diffusion-curriculum``), the run's name the run directory's;
    W&B's files go to ``$WANDB_DIR`` when set, else into the run directory (``<run>/wandb``). The W&B run id is
    ``run_id``: random for each new run, kept in the run directory, so ``--resume`` continues the same W&B run and a
    new run at a reused path starts a W&B run of its own. Every other W&B
    setting comes from its own environment variables (``WANDB_MODE=offline`` logs without a network; ``wandb
    sync`` uploads later)."""

    def __init__(self, out: Path, cfg: dict, run_id: str):
        import wandb

        self.wandb = wandb
        where = Path(out).resolve()
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "diffusion-curriculum",
            name=where.name,
            id=run_id,
            resume="allow",
            dir=None if os.environ.get("WANDB_DIR") else str(where),
            config=cfg,
        )

    def on_eval(self, trainer: Any, samples: torch.Tensor, step: int) -> dict[str, Any]:
        """Log the evaluation's picture (the PNG the trainer has just written) at ``step``."""
        path = getattr(trainer, "samples_path", None)
        if path is not None and Path(path).is_file():
            self.run.log({"samples": self.wandb.Image(str(path))}, step=step)
        return {}

    def on_record(self, trainer: Any, rec: dict[str, Any]) -> None:
        """Log the record's numbers, and its drawn-noise histogram when it has one."""
        logged: dict[str, Any] = scalars(rec)
        if "t_hist" in rec:
            hist = (rec["t_hist"], rec["t_hist_edges"])
            logged["t_hist"] = self.wandb.Histogram(np_histogram=hist)
        self.run.log(logged, step=rec["step"])

    def close(self) -> None:
        """Finish the W&B run (its files are complete after this)."""
        self.run.finish()


class ProgressBar(Hook):
    """A tqdm bar on stderr from ``initial`` to ``total`` steps, showing the last logged loss and the sampler's
    status; ``enabled=False`` shows nothing."""

    def __init__(self, total: int, initial: int, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            initial=initial,
            unit="step",
            dynamic_ncols=True,
            mininterval=1.0,
            disable=not enabled,
            file=sys.stderr,
        )

    def on_iteration(self, trainer: Any) -> None:
        """One step more."""
        self.bar.update(1)

    def on_record(self, trainer: Any, rec: dict[str, Any]) -> None:
        """A training record updates the loss (or "skipped") and the sampler's status shown."""
        if "loss" not in rec:
            return
        shown = "skipped" if rec["loss"] is None else f"{rec['loss']:.4f}"
        self.bar.set_postfix(loss=shown, **rec.get("sampler", {}), refresh=False)

    def skip_pause(self) -> None:
        """Leave the time since the bar last printed out of its rate and ETA (an evaluation's, plus at most the
        bar's 1 s print interval of training before it): the ETA then follows the training pace instead of jumping
        after every evaluation."""
        self.bar.unpause()

    def close(self) -> None:
        """Close the bar (once is enough; later calls do nothing)."""
        self.bar.close()


def stderr_line(msg: str) -> None:
    """One line on stderr that leaves a progress bar on it intact (``tqdm.write``): the trainer's messages."""
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)


class QualityMetrics(Hook):
    """Sample quality at every evaluation (:class:`metrics.Evaluator`: FD and friends) against ``dataset``,
    with the config's ``metrics`` settings. When image data's feature net is not in the cache yet, it says
    (``say``) that it trains it first (a silent ~15 s otherwise) and how long that took; a net loaded from the
    cache is not announced."""

    def __init__(self, dataset: Any, metrics_cfg: dict, device: torch.device, say: Any = None):
        from .. import metrics

        say = say or (lambda msg: None)
        started: list[float] = []

        def training() -> None:
            started.append(time.perf_counter())
            say(
                "quality metrics: training the feature net for FD on first use (~15 s on a CPU; cached after)..."
            )

        # the feature net's seed is fixed (not the run's) so quality numbers compare across seeds and runs
        self.evaluator = metrics.Evaluator(
            dataset,
            seed=0,
            n_real=metrics_cfg["n_real"],
            inception_weights=metrics_cfg["inception_weights"],
            device=device,
            **({"on_train": training} if dataset.kind == "image" else {}),
        )
        if started:
            say(
                f"quality metrics: feature net trained in {time.perf_counter() - started[0]:.0f} s and cached"
            )

    def on_eval(self, trainer: Any, samples: torch.Tensor, step: int) -> dict[str, Any]:
        """The quality numbers of ``samples``; of a class-conditional run on labelled images (its class-balanced
        samples, generated at ``eval.guidance``) also ``accuracy``."""
        from .conditioning import eval_labels

        labels = eval_labels(getattr(trainer, "label_dropout", None), samples.shape[0]).get("labels")
        # accuracy needs a classifier of the data: labelled images only (conditional 2-D points have no accuracy)
        return self.evaluator(samples, labels=labels if self.evaluator.has_accuracy else None)


class WeightingLog(Hook):
    """A learned weighting's u (log-variance) at the centres of ``bins`` equal noise-level buckets, logged at
    every evaluation as ``weighting_u`` (cleanest bucket first) — where the weighting has learned the loss is
    large (high u) or small."""

    def __init__(self, weighting: Any, process: Any, bins: int = 10):
        edges, _ = noise_levels.bucket_edges(process, bins)
        mids = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        self.weighting = weighting
        self.t = noise_levels.levels(process, mids)

    def on_eval(self, trainer: Any, samples: torch.Tensor, step: int) -> dict[str, Any]:
        """``{"weighting_u": [u per bucket]}``."""
        with torch.no_grad():
            u = self.weighting.u(self.t.to(trainer.device))
        return {"weighting_u": [round(float(x), 4) for x in u.cpu()]}


class InterruptGuard:
    """Ctrl-C (SIGINT) and SIGTERM taken at a step boundary, as a context manager around the training loop.

    A KeyboardInterrupt raised mid-step (after the batch or the timesteps were drawn, or the optimizer
    stepped, but before the step count moved) would save a state that does not match its step, and the
    resumed run would silently diverge. So the first signal only counts (:attr:`presses`) and the loop stops
    after the step; a second one raises at once. SIGTERM (what ``kill``, ``timeout``, Slurm and Kubernetes
    send) is taken exactly like Ctrl-C. The handlers are installed only in the main thread (Python delivers
    signals there) and the previous ones are put back on exit.
    """

    #: the signals taken like Ctrl-C
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, say: Any = None) -> None:
        #: Ctrl-C presses (or SIGTERMs) seen while the guard was active
        self.presses = 0
        #: the name of the first signal seen ("SIGINT", "SIGTERM"), or None
        self.signal_name: str | None = None
        #: said at once on the first signal (what happens next), when set
        self.first_message: str | None = None
        self._say = say or (lambda msg: None)
        self._previous: dict[int, Any] = {}

    def _on_signal(self, signum, frame) -> None:
        self.presses += 1
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
        if self.presses > 1:
            raise KeyboardInterrupt
        if self.first_message:  # acknowledged at once: an evaluation may take a while yet
            self._say(f"{self.signal_name}: {self.first_message}")

    def __enter__(self) -> InterruptGuard:
        self.presses, self.signal_name = 0, None
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def reason(self) -> str:
        """How the stop was asked for, for the trainer's message: "" for Ctrl-C, " (SIGTERM)" for SIGTERM."""
        return f" ({self.signal_name})" if self.signal_name not in (None, "SIGINT") else ""
