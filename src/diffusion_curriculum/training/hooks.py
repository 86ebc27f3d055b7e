"""What the trainer does around its steps, as hooks: the drawn-noise histogram, the JSONL log, TensorBoard, the
progress bar and Ctrl-C / SIGTERM.

A hook subclasses :class:`Hook` and overrides what it needs; the trainer calls, in its hooks' order,

* ``on_step(trainer, t, per_sample)`` after every step that learned (its noise levels and per-sample losses:
  what a recorder of per-noise-level losses needs; a skipped non-finite step calls nothing),
  ``on_iteration(trainer)`` after every step, skipped or not;
* ``on_eval(trainer, samples, step) -> dict`` at every evaluation (rank 0 only), its numbers merged into the
  evaluation's record; ``on_record(trainer, rec)`` for every record logged (rank 0 only); ``close()`` at the
  end of the run.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from .. import noise_levels

#: bins of the drawn-noise-level histogram logged at every evaluation
T_HIST_BINS = 20


class Hook:
    """Base class of the trainer's hooks; every method does nothing."""

    def on_step(self, trainer: Any, t: torch.Tensor, per_sample: torch.Tensor) -> None:
        """After a step that learned: its noise levels ``t`` and per-sample losses ``per_sample`` (detached)."""

    def on_iteration(self, trainer: Any) -> None:
        """After every step, one that was skipped too."""

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
        """Count the step's draws."""
        self.counts += torch.bincount(self.bin_of(t), minlength=self.bins)

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


class TensorBoard(Hook):
    """Every number of every record as a TensorBoard scalar at the record's step (``tensorboard: true``)."""

    def __init__(self, logdir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(logdir))

    def on_record(self, trainer: Any, rec: dict[str, Any]) -> None:
        """Add the record's numbers."""
        for k, v in rec.items():
            if k != "step" and isinstance(v, (int, float)):
                self.writer.add_scalar(k, v, rec["step"])

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


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

    def close(self) -> None:
        """Close the bar (once is enough; later calls do nothing)."""
        self.bar.close()


def stderr_line(msg: str) -> None:
    """One line on stderr that leaves a progress bar on it intact (``tqdm.write``): the trainer's messages."""
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)


class QualityMetrics(Hook):
    """Sample quality at every evaluation (:class:`metrics.Evaluator`: FD and friends) against ``dataset``,
    with the config's ``metrics`` settings. For image data it says (``say``) that it prepares the feature net
    first, and how long training it took when it was not cached: that is a silent ~15 s otherwise."""

    def __init__(self, dataset: Any, metrics_cfg: dict, device: torch.device, say: Any = None):
        from .. import metrics

        say = say or (lambda msg: None)
        if dataset.kind == "image":
            say("quality metrics: loading the feature net for FD (trained on first use, ~15 s on a CPU)...")
        t0 = time.perf_counter()
        # the feature net's seed is fixed (not the run's) so quality numbers compare across seeds and runs
        self.evaluator = metrics.Evaluator(
            dataset,
            seed=0,
            n_real=metrics_cfg["n_real"],
            inception_weights=metrics_cfg["inception_weights"],
            device=device,
        )
        if getattr(getattr(self.evaluator, "feature_net", None), "source", None) == "trained":
            say(f"quality metrics: feature net trained in {time.perf_counter() - t0:.0f} s and cached")

    def on_eval(self, trainer: Any, samples: torch.Tensor, step: int) -> dict[str, Any]:
        """The quality numbers of ``samples``."""
        return self.evaluator(samples)


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

    def __init__(self) -> None:
        #: Ctrl-C presses (or SIGTERMs) seen while the guard was active
        self.presses = 0
        #: the name of the first signal seen ("SIGINT", "SIGTERM"), or None
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _on_signal(self, signum, frame) -> None:
        self.presses += 1
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
        if self.presses > 1:
            raise KeyboardInterrupt

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
