"""Where the runs of a sweep are trained: the launchers behind ``compare --launcher`` and :func:`sweep.run`.

- ``processes`` (the default): ``diffusion-curriculum train`` subprocesses on this machine, up to ``jobs`` at
  a time, each writing its output to its run's ``train.log``. On a machine with several GPUs the runs whose
  configuration says ``device: cuda`` or ``auto`` (and whose command line names no device) are placed one per
  GPU, round-robin (``device=cuda:i``, :func:`place_on_gpus`), and ``jobs`` defaults to the number of GPUs.
- ``submitit-local``: every run a job of submitit's ``LocalExecutor`` on this machine, up to ``jobs`` at a
  time: the job path of ``slurm``, testable without a cluster.
- ``slurm``: every run a job of submitit's ``SlurmExecutor`` (one job array; ``jobs`` caps how many run at
  once), with the partition, GPUs per run, time limit and any other executor parameter passed through; the
  launcher prints the job ids and waits for them unless told not to.

Every job trains one run directory with ``train --resume-if-present``, so a job that was stopped (a time limit,
a preemption, Ctrl-C) is continued by running the same command again; a finished run is never retrained.

CPU threads per run (:func:`thread_setting`): ``threads`` when given, else an exported ``OMP_NUM_THREADS`` or
``MKL_NUM_THREADS`` (never overridden), else the cores this process may use ÷ the runs that share them.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING

from .checks import suggest
from .errors import ConfigError

if TYPE_CHECKING:
    from .sweep import RunPlan

__all__ = [
    "LAUNCHERS",
    "Launcher",
    "Processes",
    "forward_signals",
    "make",
    "place_on_gpus",
    "run_job",
    "start_note",
    "thread_setting",
    "train_subprocess",
]

LAUNCHERS = ("processes", "submitit-local", "slurm")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
Say = Callable[[str], None]


# -- threads and devices ---------------------------------------------------------------------------------
def cores() -> int:
    """The CPU cores this process may run on (its affinity mask, which a Slurm allocation or ``taskset`` sets)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def thread_setting(
    share: int, threads: int | None = None, environ: Mapping[str, str] | None = None
) -> tuple[dict[str, str], str]:
    """The ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` a run's process gets, and why, as ``(variables, reason)``.

    ``threads`` (``--threads``) sets both. Else a variable exported in ``environ`` (default ``os.environ``) is
    kept as it is, and the other one, if unset, follows it. Else both are the cores ÷ ``share``, the number of
    runs that share them (at least 1)."""
    environ = os.environ if environ is None else environ
    if threads is not None:
        return {v: str(threads) for v in THREAD_VARS}, "--threads"
    given = {v: environ[v] for v in THREAD_VARS if environ.get(v, "").strip()}
    if given:
        first = next(iter(given.values()))
        return {v: given.get(v, first) for v in THREAD_VARS}, f"{', '.join(given)} exported"
    n = max(1, cores() // max(1, share))
    return {v: str(n) for v in THREAD_VARS}, f"{cores()} cores / {max(1, share)} runs at a time"


def place_on_gpus(plans: list[RunPlan], n_gpus: int) -> list[RunPlan]:
    """``plans`` with ``device=cuda:i`` added, round-robin over ``n_gpus`` GPUs, to each plan whose
    configuration's device is ``cuda`` or ``auto`` and whose command line names none (``plan.device``); with
    fewer than two GPUs the plans are returned unchanged. A pure function: the planning is testable without a
    GPU."""
    if n_gpus < 2:
        return list(plans)
    out, i = [], 0
    for p in plans:
        if p.device in ("cuda", "auto"):
            p = dataclasses.replace(p, overrides=(*p.overrides, f"device=cuda:{i % n_gpus}"))
            i += 1
        out.append(p)
    return out


def start_note(plan: RunPlan) -> str:
    """ "resumed at step N" when the run's directory holds a checkpoint (N: the newest), else "started"."""
    from .runlog import newest_checkpoint_step

    step = newest_checkpoint_step(plan.run_dir)
    return "started" if step is None else f"resumed at step {step}"


# -- one run ---------------------------------------------------------------------------------------------
def train_subprocess(
    plan: RunPlan, env: Mapping[str, str], *, running: dict | None = None, own_session: bool = False
) -> str | None:
    """Train ``plan`` in a ``train`` subprocess with environment ``env``, its output appended to the run's
    ``train.log``; ``None`` on success, else the log's ``error:`` line (or its last line: "interrupted at step
    N ..." for a run stopped by a signal).

    With ``own_session`` the child does not receive the terminal's Ctrl-C itself: whoever holds it in
    ``running`` (``{label: Popen}``) forwards one signal, so the child gets exactly one and saves a checkpoint.
    A ``KeyboardInterrupt`` here while the child runs (a job's Ctrl-C, which the child received too) waits for
    the child to save and stop instead of killing it."""
    cmd = plan.command()
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    log_path = plan.run_dir / "train.log"
    with open(log_path, "a") as log:
        p = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(env), start_new_session=own_session
        )
        if running is not None:
            running[plan.label] = p
        try:
            while True:
                try:
                    rc = p.wait()
                    break
                except KeyboardInterrupt:
                    continue  # the child got the signal as well and is saving its checkpoint
        finally:
            if running is not None:
                running.pop(plan.label, None)
    if rc == 0:
        return None
    lines = log_path.read_text(errors="replace").strip().splitlines()
    return next((x for x in reversed(lines) if x.startswith("error:")), lines[-1] if lines else f"exit {rc}")


def run_job(
    plan: RunPlan,
    thread_vars: dict[str, str] | None = None,
    threads: int | None = None,
    forward_sigterm: bool = False,
) -> str | None:
    """A submitit job's body: train ``plan`` (:func:`train_subprocess`) with ``thread_vars`` set, or when
    ``None`` the :func:`thread_setting` of the machine the job runs on (one run per job there).

    ``forward_sigterm`` (local jobs): a SIGTERM this job receives is passed on to its ``train``, which saves a
    checkpoint and stops; on Slurm the scheduler signals every process of the job itself."""
    running: dict = {}
    previous = None
    if forward_sigterm and threading.current_thread() is threading.main_thread():

        def forward(signum, frame):
            for p in list(running.values()):
                p.send_signal(signum)

        previous = signal.signal(signal.SIGTERM, forward)
    if thread_vars is None:
        thread_vars, _ = thread_setting(1, threads)
    try:
        return train_subprocess(plan, {**os.environ, **thread_vars}, running=running)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# -- launchers -------------------------------------------------------------------------------------------
class Launcher:
    """How :func:`sweep.run` trains the unfinished runs of a plan. A subclass implements :meth:`launch`."""

    name = "processes"
    #: whether :meth:`launch` returns only once every run has ended (slurm with ``wait=False`` does not)
    waits = True

    def __init__(self, threads: int | None = None):
        #: ``--threads``: CPU threads per run, or ``None`` (see :func:`thread_setting`)
        self.threads = threads
        #: the command that builds the tables from the runs on disk, said once jobs are submitted (or None)
        self.summarize_hint: str | None = None
        self._stop = threading.Event()

    def prepare(self, todo: list[RunPlan]) -> list[RunPlan]:
        """The plans as this launcher will train them (the processes launcher places them on GPUs)."""
        return list(todo)

    def default_jobs(self, todo: list[RunPlan]) -> int:
        """How many runs train at a time when ``--jobs`` is not given: the CPU cores."""
        return cores()

    def threads_line(self, share: int) -> str:
        """The line that says how many CPU threads each run gets, and why."""
        env, why = thread_setting(share, self.threads)
        return f"CPU threads per run: {env['OMP_NUM_THREADS']} ({why})"

    def launch(
        self, todo: list[RunPlan], *, jobs: int, say: Say, folder: Path
    ) -> Iterator[tuple[RunPlan, str | None]]:
        """Train ``todo``, ``jobs`` at a time; yield ``(plan, error or None)`` as each run ends. ``folder``
        holds the launcher's own files (submitit's job logs)."""
        raise NotImplementedError

    def stop(self, signum: int) -> None:
        """Ctrl-C or SIGTERM reached the sweep: start no more runs (a subclass also stops the running ones)."""
        self._stop.set()

    def _pool(self, todo: list[RunPlan], jobs: int, train: Callable[[RunPlan], str | None]):
        """Run ``train`` on each plan in a pool of ``jobs`` threads; yield (plan, result) as each ends. Plans
        not started when :meth:`stop` was called report "not started (interrupted)"."""

        def one(plan: RunPlan) -> str | None:
            if self._stop.is_set():
                return "not started (interrupted)"
            return train(plan)

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(one, p): p for p in todo}
            for f in as_completed(futures):
                yield futures[f], f.result()


class Processes(Launcher):
    """``train`` subprocesses on this machine (see the module's docstring); one run per GPU on a multi-GPU machine."""

    name = "processes"

    def __init__(self, threads: int | None = None):
        super().__init__(threads)
        self._running: dict[str, subprocess.Popen] = {}

    def prepare(self, todo: list[RunPlan]) -> list[RunPlan]:
        import torch

        return place_on_gpus(todo, torch.cuda.device_count())

    def default_jobs(self, todo: list[RunPlan]) -> int:
        import torch

        n = torch.cuda.device_count()
        placed = n > 1 and any(p.device in ("cuda", "auto") for p in todo)
        return n if placed else cores()

    def launch(self, todo, *, jobs, say, folder):
        env = {**os.environ, **thread_setting(min(jobs, len(todo)), self.threads)[0]}

        def train(plan: RunPlan) -> str | None:
            say(f"{plan.label}: {start_note(plan)}")
            return train_subprocess(plan, env, running=self._running, own_session=True)

        yield from self._pool(todo, jobs, train)

    def stop(self, signum: int) -> None:
        """Pass the signal on to every running ``train`` (once each): they save a checkpoint and stop."""
        super().stop(signum)
        for p in list(self._running.values()):
            try:
                p.send_signal(signum)
            except OSError:
                pass


def make(
    name: str = "processes",
    *,
    threads: int | None = None,
    partition: str | None = None,
    gpus_per_run: int | None = None,
    time: str | None = None,
    extra: list[str] | None = None,
    wait: bool = True,
) -> Launcher:
    """The launcher ``name`` with its options, checked: a ConfigError (one sentence) for an unknown name, a
    Slurm option without ``slurm``, a bad value, or submitit missing for the submitit launchers."""
    if name not in LAUNCHERS:
        raise ConfigError(
            f"--launcher {name!r} is not known{suggest(name, LAUNCHERS)}; allowed: {', '.join(LAUNCHERS)}"
        )
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads {threads} is invalid; allowed: a positive integer")
    given = {
        "--slurm-partition": partition is not None,
        "--slurm-gpus-per-run": gpus_per_run is not None,
        "--slurm-time": time is not None,
        "--slurm-extra": bool(extra),
        "--no-wait": not wait,
    }
    if name != "slurm":
        flags = [f for f, on in given.items() if on]
        if flags:
            raise ConfigError(
                f"{', '.join(flags)} only apply to --launcher slurm (the launcher here is {name!r})"
            )
        if name == "processes":
            return Processes(threads)
    from . import submitit_jobs as sj

    if name == "submitit-local":
        return sj.SubmititLocal(threads)
    if gpus_per_run is not None and gpus_per_run not in (0, 1):
        raise ConfigError(
            f"--slurm-gpus-per-run {gpus_per_run} is invalid; allowed: 0 or 1 (a run trains in one process; "
            "for several GPUs per run launch train under torchrun yourself)"
        )
    if partition is not None and not partition.strip():
        raise ConfigError("--slurm-partition is empty; give a partition name (sinfo lists them)")
    time = sj.DEFAULT_SLURM_TIME if time is None else time
    sj.slurm_minutes(time)
    sj.load_submitit("slurm")
    return sj.Slurm(
        threads,
        partition=partition,
        gpus_per_run=1 if gpus_per_run is None else gpus_per_run,
        time=time,
        extra=sj.slurm_extra(list(extra or [])),
        wait=wait,
    )


def forward_signals(launcher: Launcher):
    """A context manager: while it is active (in the main thread), Ctrl-C and SIGTERM go to
    ``launcher.stop`` instead of ending this process at once; the signal seen first is returned by
    ``cm.signal_name`` (``None`` when none came)."""
    return _Signals(launcher)


class _Signals:
    def __init__(self, launcher: Launcher):
        self.launcher, self.signal_name, self._previous = launcher, None, {}

    def _on(self, signum, frame) -> None:
        self.signal_name = self.signal_name or signal.Signals(signum).name
        self.launcher.stop(signum)

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
