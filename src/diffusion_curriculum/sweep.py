"""Many training runs, one runner: ``compare`` and the analyses describe their runs as a plan, this trains them.

A plan is a list of :class:`RunPlan` — one run directory each, the configuration it is trained with, and the
number of steps that makes it finished. :func:`run` skips the finished runs, resumes the unfinished ones from
their newest checkpoint and trains the rest, up to ``jobs`` at a time as ``diffusion-curriculum train``
subprocesses (each with its share of the CPU threads and its output in the run's ``train.log``), or one after
another in this process when asked to and only one job runs at a time (no interpreter start-up per run).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import runlog

__all__ = ["RunPlan", "config_args", "run"]


@dataclass(frozen=True)
class RunPlan:
    """One training run of a sweep.

    ``label`` names the run in the progress lines and in the failures :func:`run` returns (unique within a
    plan). The configuration is ``preset`` or ``config_file`` (or the defaults when both are ``None``) with
    ``overrides`` (``key=value`` strings) applied in order. ``steps`` is the configuration's total: a run whose
    ``summary.json`` reports it is finished.
    """

    label: str
    run_dir: Path
    steps: int
    preset: str | None = None
    config_file: str | None = None
    overrides: tuple[str, ...] = ()

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
) -> dict[str, str]:
    """Train every unfinished run of ``plans``; return ``{label: error}`` for the runs that failed.

    ``jobs`` (default: the CPU count) runs at a time. First ``say(header(total, finished, jobs))`` (default: "training N runs (M already finished), J at a time"), then one
    line per run as it ends: ``[i/n] label: done`` or ``FAILED (error)`` with the elapsed seconds. With
    ``serial_in_process`` and ``jobs == 1`` the runs are trained in this process, one after another.
    """
    jobs = jobs or os.cpu_count() or 1
    todo = [p for p in plans if not runlog.finished(p.run_dir, p.steps)]
    say((header or _default_header)(len(plans), len(plans) - len(todo), jobs))
    if serial_in_process and jobs == 1:
        return _collect(todo, (_train_in_process(p, say) for p in todo), say)
    threads = _threads_per_job(min(jobs, max(1, len(todo))))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return _collect(todo, pool.map(lambda p: _train_subprocess(p, threads), todo), say)


def _collect(
    todo: list[RunPlan], results: Iterable[str | None], say: Callable[[str], None]
) -> dict[str, str]:
    """Report each run as its result arrives (in plan order); return ``{label: error}`` of the failed ones."""
    failures: dict[str, str] = {}
    t0 = time.time()
    for i, (plan, error) in enumerate(zip(todo, results), 1):
        if error is not None:
            failures[plan.label] = error
        status = "done" if error is None else f"FAILED ({error})"
        say(f"[{i}/{len(todo)}] {plan.label}: {status} ({time.time() - t0:.0f} s)")
    return failures


def _threads_per_job(jobs: int) -> int:
    """CPU threads each of ``jobs`` concurrent runs may use, so together they do not oversubscribe the CPU."""
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def _train_subprocess(plan: RunPlan, threads: int) -> str | None:
    """Train ``plan`` in a ``train`` subprocess; ``None`` on success, else the log's ``error:`` line (or its last)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = plan.command()
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    log_path = plan.run_dir / "train.log"
    with open(log_path, "a") as log:
        p = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if p.returncode == 0:
        return None
    lines = log_path.read_text(errors="replace").strip().splitlines()
    return next((x for x in reversed(lines) if x.startswith("error:")), lines[-1] if lines else "")


def _train_in_process(plan: RunPlan, say: Callable[[str], None]) -> str | None:
    """Train ``plan`` with a :class:`~diffusion_curriculum.train.Trainer` here; ``None`` or the error's text."""
    from . import config
    from .errors import TrainingError
    from .training import Trainer

    run_dir = plan.run_dir
    try:
        resume = (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists()
        cfg = config.resolve(plan.preset, plan.config_file, list(plan.overrides))
        Trainer(cfg, run_dir, resume=resume, log=say).run()
    except TrainingError as e:
        return str(e)
    return None
