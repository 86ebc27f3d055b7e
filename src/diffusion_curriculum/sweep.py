"""Many training runs, one runner: ``compare`` and the analyses describe their runs as a plan, this trains them.

A plan is a list of :class:`RunPlan` — one run directory each, the configuration it is trained with, and the
number of steps that makes it finished. :func:`run` skips the finished runs, resumes the unfinished ones from
their newest checkpoint and trains the rest through a launcher (:mod:`diffusion_curriculum.launchers`): by
default up to ``jobs`` at a time as ``diffusion-curriculum train`` subprocesses (each with its share of the CPU
threads, or the thread count exported or asked for, and its output in the run's ``train.log``), or as
submitit jobs on this machine or a Slurm cluster; or one after another in this process when asked to and only
one job runs at a time (no interpreter start-up per run). While the runs train, a line per run reports its
step, loss, steps/s and the time left every ``progress_every`` seconds.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from . import launchers, runlog
from .errors import Interrupted

__all__ = ["RunPlan", "config_args", "run"]


@dataclass(frozen=True)
class RunPlan:
    """One training run of a sweep.

    ``label`` names the run in the progress lines and in the failures :func:`run` returns (unique within a
    plan). The configuration is ``preset`` or ``config_file`` (or the defaults when both are ``None``) with
    ``overrides`` (``key=value`` strings) applied in order. ``steps`` is the configuration's total: a run whose
    ``summary.json`` reports it is finished. ``device`` is the configuration's device when the command line
    names none (``None`` when it does): a launcher may then place a ``cuda`` or ``auto`` run on a GPU of its
    choice (:func:`~diffusion_curriculum.launchers.place_on_gpus`).
    """

    label: str
    run_dir: Path
    steps: int
    preset: str | None = None
    config_file: str | None = None
    overrides: tuple[str, ...] = ()
    device: str | None = None

    def command(self) -> list[str]:
        """The ``diffusion-curriculum train`` command line that trains (or resumes) this run."""
        cmd = [sys.executable, "-m", "diffusion_curriculum", "train"]
        cmd += [*config_args(self.preset, self.config_file), "--out", str(self.run_dir), *self.overrides]
        if self.run_dir.exists():
            cmd.append(
                "--resume-if-present"
            )  # the folder may hold only a train.log of a run that never started
        return cmd


def config_args(preset: str | None, config_file: str | None) -> list[str]:
    """The command-line arguments that select the same preset or config file in a subprocess."""
    return ["--preset", preset] if preset else ["--config", str(config_file)] if config_file else []


def _default_header(total: int, finished: int, jobs: int) -> str:
    return f"training {total - finished} runs ({finished} already finished), {jobs} at a time"


def run(
    plans: list[RunPlan],
    *,
    jobs: int | None = None,
    say: Callable[[str], None],
    header: Callable[[int, int, int], str] | None = None,
    serial_in_process: bool = False,
    threads: int | None = None,
    launcher: launchers.Launcher | None = None,
    folder: Path | None = None,
    progress_every: float = 30.0,
) -> dict[str, str]:
    """Train every unfinished run of ``plans``; return ``{label: error}`` for the runs that failed.

    ``launcher`` (default :class:`~diffusion_curriculum.launchers.Processes` with ``threads`` CPU threads per
    run) trains them, ``jobs`` at a time (default: the launcher's, the CPU cores or the GPUs); ``folder`` holds
    its own files (default: ``jobs/`` beside the first run's parent). First ``say(header(total, finished,
    jobs))`` (default: "training N runs (M already finished), J at a time") and the threads per run; then
    "label: started" or "label: resumed at step N" as each run starts, a progress line per running run every
    ``progress_every`` seconds (0: none), and one line per run as it ends: ``[i/n] label: done``, ``stopped
    (...)`` or ``FAILED (error)`` with the run's own wall seconds (since it started, not since the sweep did). With ``serial_in_process`` and ``jobs == 1`` (and
    no ``launcher``) the runs are trained in this process, one after another.

    Ctrl-C or SIGTERM while runs train is passed on to them (each saves a checkpoint and stops), no further
    run starts, and :class:`~diffusion_curriculum.errors.Interrupted` is raised once they have stopped."""
    todo = [p for p in plans if not runlog.finished(p.run_dir, p.steps)]
    in_process = serial_in_process and launcher is None
    launcher = launcher or launchers.Processes(threads)
    todo = launcher.prepare(todo)
    jobs = jobs or launcher.default_jobs(todo)
    say((header or _default_header)(len(plans), len(plans) - len(todo), jobs))
    if not todo:
        return {}
    if in_process and jobs == 1:
        return _collect(((p, _train_in_process(p, say)) for p in todo), len(todo), say)
    say(launcher.threads_line(min(jobs, len(todo))))
    folder = folder or todo[0].run_dir.parent.parent / "jobs"
    with _Progress(todo, say, progress_every) as progress, launchers.forward_signals(launcher) as signals:
        try:
            launched = launcher.launch(todo, jobs=jobs, say=say, folder=folder)
            failures = _collect(launched, len(todo), say, on_end=progress.ended)
        except KeyboardInterrupt:
            failures = None
    if signals.signal_name or failures is None:
        why = signals.signal_name or "Ctrl-C"
        msg = f"stopped by {why}; run the same command again to continue the unfinished runs"
        say(msg)
        raise Interrupted(msg)
    return failures


def _collect(
    results: Iterable[tuple[RunPlan, str | None]],
    n: int,
    say: Callable[[str], None],
    t0: float | None = None,
    on_end: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """Report each run as its result arrives; return ``{label: error}`` of the runs that did not finish. ``t0``:
    when the sweep started (default: now); ``on_end(label)`` is called before a run's line is said (the progress
    watcher then says nothing more of it)."""
    failures: dict[str, str] = {}
    t0 = time.time() if t0 is None else t0
    for i, (plan, error) in enumerate(results, 1):
        if on_end is not None:
            on_end(plan.label)
        if error is None:
            status = "done"
        else:
            failures[plan.label] = error
            stopped = error.startswith(("interrupted", "not started"))
            status = f"stopped ({error})" if stopped else f"FAILED ({error})"
        say(f"[{i}/{n}] {plan.label}: {status} ({_run_seconds(plan, t0):.0f} s)")
    return failures


def _run_seconds(plan: RunPlan, t0: float) -> float:
    """Wall seconds since the run (last) started: its ``config.yaml`` is written then; since ``t0`` for a run that
    never wrote one."""
    try:
        started = (plan.run_dir / "config.yaml").stat().st_mtime
    except OSError:
        started = t0
    return time.time() - max(started, t0)


def _duration(seconds: float) -> str:
    """``42 s``, ``12 min`` or ``3.4 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class _Progress:
    """While active, every ``every`` seconds one line per run whose ``metrics.jsonl`` holds a training record
    it has not reported yet: ``label: step S/T (P %), loss L, R steps/s, ETA E``. R is the run's own training
    throughput over its last logging interval; E extrapolates the wall-clock pace since this watcher first saw
    the run advance (evaluations included), or R before that. The files are read, nothing is written."""

    def __init__(self, plans: list[RunPlan], say: Callable[[str], None], every: float):
        self.plans, self.say, self.every = plans, say, every
        self.last = {p.label: self._record(p) for p in plans}
        self.seen: dict[str, tuple[float, int]] = {}
        self._ended: set[str] = set()
        self._lock = threading.Lock()  # a run's last progress line comes before its "done" line, never after
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="sweep-progress")

    @staticmethod
    def _record(plan: RunPlan) -> dict | None:
        recs = [r for r in runlog.read_metrics(plan.run_dir / "metrics.jsonl") if "loss" in r]
        return recs[-1] if recs else None

    def ended(self, label: str) -> None:
        """The run ``label`` has ended: no more lines for it (waits for a line being said)."""
        with self._lock:
            self._ended.add(label)

    def poll(self) -> None:
        """Say a line for each run with a new training record, unless it has ended."""
        with self._lock:
            self._poll()

    def _poll(self) -> None:
        now = time.time()
        for p in self.plans:
            if p.label in self._ended:
                continue
            rec = self._record(p)
            if rec is None or rec == self.last[p.label]:
                continue
            self.last[p.label] = rec
            step = rec["step"]
            t0, s0 = self.seen.setdefault(p.label, (now, step))
            rate = (step - s0) / (now - t0) if step > s0 and now > t0 else rec.get("steps_per_s") or 0.0
            eta = _duration((p.steps - step) / rate) if rate > 0 else "unknown"
            loss = rec.get("loss")
            loss = f"{loss:.4g}" if isinstance(loss, float) else "none (skipped steps)"
            sps = rec.get("steps_per_s")
            sps = f"{sps:.3g} steps/s" if isinstance(sps, (int, float)) else "? steps/s"
            pct = 100 * step / max(1, p.steps)
            self.say(f"{p.label}: step {step}/{p.steps} ({pct:.0f} %), loss {loss}, {sps}, ETA {eta}")

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            self.poll()

    def __enter__(self) -> _Progress:
        if self.every > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def _train_in_process(plan: RunPlan, say: Callable[[str], None]) -> str | None:
    """Train ``plan`` with a :class:`~diffusion_curriculum.train.Trainer` here; ``None`` or the error's text."""
    from . import config
    from .errors import TrainingError
    from .training import Trainer, rundir

    run_dir = plan.run_dir
    try:
        resume = (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists()
        cfg = config.resolve(plan.preset, plan.config_file, list(plan.overrides))
        if resume:  # as `train --resume-if-present` reads the run's own config.yaml
            cfg = rundir.with_legacy_eval(cfg, run_dir)
        Trainer(cfg, run_dir, resume=resume, log=say).run()
    except TrainingError as e:
        return str(e)
    return None
