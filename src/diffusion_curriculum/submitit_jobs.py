"""The submitit launchers of :mod:`diffusion_curriculum.launchers`: ``submitit-local`` (submitit's
``LocalExecutor``, every run a job on this machine) and ``slurm`` (its ``SlurmExecutor``, every run a job of one
job array), and the checks of the Slurm options (:func:`slurm_minutes`, :func:`slurm_extra`).

submitit is an optional extra (``pip install 'diffusion-curriculum[submitit]'``); this module imports it only
when a launcher is made, so the rest of the library never needs it.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .checks import first_line, suggest
from .errors import ConfigError
from .launchers import Launcher, run_job, start_note, thread_setting

if TYPE_CHECKING:
    from .sweep import RunPlan

__all__ = ["INSTALL", "Slurm", "SubmititLocal", "slurm_extra", "slurm_minutes"]

INSTALL = "pip install 'diffusion-curriculum[submitit]'"
#: SlurmExecutor parameters set by their own options (--slurm-extra may not set them)
OWN_OPTIONS = {
    "partition": "--slurm-partition",
    "gpus_per_node": "--slurm-gpus-per-run",
    "time": "--slurm-time",
}
DEFAULT_SLURM_TIME = "24:00:00"


def load_submitit(launcher: str = "submitit-local"):
    """The submitit module, or a ConfigError saying that ``--launcher <launcher>`` needs it and how to
    install it."""
    try:
        import submitit
    except ImportError:
        raise ConfigError(
            f"--launcher {launcher} needs submitit, which is not installed; install it with {INSTALL}"
        ) from None
    return submitit


def _drop_literal_folder(folder: Path) -> None:
    """Remove the empty folder literally named ``%j`` that submitit's executor makes from its folder pattern (each
    job's files go to ``folder/<job id>``)."""
    literal = folder / "%j"
    if literal.is_dir() and not any(literal.iterdir()):
        literal.rmdir()


class SubmititLocal(Launcher):
    """Every run a job of submitit's ``LocalExecutor`` on this machine, up to ``jobs`` at a time."""

    name = "submitit-local"

    def __init__(self, threads: int | None = None):
        super().__init__(threads)
        load_submitit(self.name)
        self._jobs: dict[str, Any] = {}

    def launch(self, todo, *, jobs, say, folder):
        executor = load_submitit(self.name).LocalExecutor(folder=str(folder / "%j"))
        executor.update_parameters(timeout_min=7 * 24 * 60)  # submitit's default would stop a job after 2 min
        thread_vars = thread_setting(min(jobs, len(todo)), self.threads)[0]

        def train(plan: RunPlan) -> str | None:
            note = start_note(plan)
            job = executor.submit(run_job, plan, thread_vars, None, True)
            self._jobs[plan.label] = job
            say(f"{plan.label}: job {job.job_id}, {note}")
            try:
                return job.result()
            except Exception as e:  # noqa: BLE001 - the job itself failed (not the run): its one line
                return f"job {job.job_id} failed: {first_line(e)}"
            finally:
                self._jobs.pop(plan.label, None)

        try:
            yield from self._pool(todo, jobs, train)
        finally:
            _drop_literal_folder(folder)

    def stop(self, signum: int) -> None:
        """Start no more jobs; a SIGTERM is passed on to the running ones (Ctrl-C in a terminal reaches them
        directly), whose ``train`` saves a checkpoint and stops."""
        super().stop(signum)
        if signum == signal.SIGTERM:
            for job in list(self._jobs.values()):
                process = getattr(job, "_process", None)  # the job's controller, which passes it on
                if process is not None and process.poll() is None:
                    process.send_signal(signal.SIGTERM)


class Slurm(Launcher):
    """Every run a job of submitit's ``SlurmExecutor``, submitted together as one job array."""

    name = "slurm"

    def __init__(
        self,
        threads: int | None = None,
        *,
        partition: str | None = None,
        gpus_per_run: int = 1,
        time: str | int = DEFAULT_SLURM_TIME,
        extra: Mapping[str, Any] | None = None,
        wait: bool = True,
        poll_s: float = 30.0,
    ):
        super().__init__(threads)
        load_submitit(self.name)
        missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
        if missing:
            raise ConfigError(
                f"--launcher slurm needs Slurm's {' and '.join(missing)}, not found on this machine's PATH; run "
                "compare on a node of the cluster (its login node)"
            )
        self.partition, self.gpus_per_run, self.time = partition, gpus_per_run, time
        self.extra, self.waits, self.poll_s = dict(extra or {}), wait, poll_s
        #: the jobs submitted by the last :meth:`launch`: ``{label: job id}``
        self.job_ids: dict[str, str] = {}

    def parameters(self, jobs: int | None = None) -> dict[str, Any]:
        """The SlurmExecutor parameters of every job: time limit in minutes, GPUs, partition, the extras, and
        ``array_parallelism`` = ``jobs`` when given."""
        params: dict[str, Any] = {"time": slurm_minutes(self.time), "job_name": "diffusion-curriculum"}
        if self.partition:
            params["partition"] = self.partition
        if self.gpus_per_run:
            params["gpus_per_node"] = self.gpus_per_run
        if jobs:
            params["array_parallelism"] = jobs
        return {**params, **self.extra}

    def executor(self, folder: Path, jobs: int | None = None):
        """A SlurmExecutor writing its job files under ``folder``, with :meth:`parameters` set."""
        executor = load_submitit(self.name).SlurmExecutor(folder=str(folder / "%j"))
        executor.update_parameters(**self.parameters(jobs))
        return executor

    def default_jobs(self, todo: list[RunPlan]) -> int:
        """Every run at once: the cluster's scheduler queues them."""
        return max(1, len(todo))

    def threads_line(self, share: int) -> str:
        if self.threads is not None:
            return f"CPU threads per run: {self.threads} (--threads)"
        return "CPU threads per run: chosen in each job (exported OMP_NUM_THREADS, else the job's cores)"

    def launch(self, todo, *, jobs, say, folder):
        executor = self.executor(folder, jobs if jobs < len(todo) else None)
        notes = {p.label: start_note(p) for p in todo}
        with executor.batch():
            submitted = [(p, executor.submit(run_job, p, None, self.threads)) for p in todo]
        self.job_ids = {p.label: str(job.job_id) for p, job in submitted}
        for p, job in submitted:
            say(f"{p.label}: slurm job {job.job_id} submitted ({notes[p.label]} when it runs)")
        if self.summarize_hint:
            say(f"the tables can be built at any time, from what the jobs wrote, with: {self.summarize_hint}")
        if not self.waits:
            return
        pending = list(submitted)
        while pending:
            for p, job in list(pending):
                if job.done():
                    pending.remove((p, job))
                    try:
                        yield p, job.result()
                    except Exception as e:  # noqa: BLE001 - the job failed (cancelled, out of time, node lost)
                        yield p, f"slurm job {job.job_id} failed: {first_line(e)}"
            if pending and self._stop.wait(self.poll_s):
                ids = " ".join(str(j.job_id) for _, j in pending)
                say(
                    f"stopped waiting; {len(pending)} jobs go on on the cluster (cancel them with scancel {ids})"
                )
                raise KeyboardInterrupt


def slurm_minutes(value: str | int) -> int:
    """A Slurm time limit as whole minutes (seconds round up): ``90`` (minutes), ``MM:SS``, ``HH:MM:SS``,
    ``D-HH``, ``D-HH:MM`` or ``D-HH:MM:SS``; a ConfigError for anything else."""
    text = str(value).strip()
    try:
        days, dash, rest = text.partition("-")
        if not dash:
            days, rest = "0", text
        parts = [int(x) for x in rest.split(":")]
        if int(days) < 0 or any(x < 0 for x in parts) or not 1 <= len(parts) <= 3:
            raise ValueError
        if dash:
            h, m, s = (parts + [0, 0])[:3]
        else:
            h, m, s = {1: (0, parts[0], 0), 2: (0, *parts), 3: tuple(parts)}[len(parts)]
        minutes = int(days) * 1440 + h * 60 + m + (1 if s else 0)
    except ValueError:
        raise ConfigError(
            f"--slurm-time {text!r} is invalid; allowed: minutes (90), HH:MM:SS or D-HH:MM:SS"
        ) from None
    if minutes < 1:
        raise ConfigError(f"--slurm-time {text!r} is invalid; allowed: a time limit of at least one minute")
    return minutes


def slurm_extra(items: list[str]) -> dict[str, Any]:
    """``--slurm-extra KEY=VALUE`` items as SlurmExecutor parameters (each VALUE read as YAML: ``8`` is a
    number, ``[a, b]`` a list); a ConfigError names an item without ``=``, a key the executor does not take
    and a key that has its own option."""
    known = sorted(load_submitit("slurm").SlurmExecutor._valid_parameters())
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise ConfigError(f"--slurm-extra {item!r} must look like KEY=VALUE (e.g. cpus_per_task=8)")
        if key in OWN_OPTIONS:
            raise ConfigError(f"--slurm-extra {item!r}: set {key} with {OWN_OPTIONS[key]}")
        if key not in known:
            raise ConfigError(
                f"--slurm-extra {item!r}: {key!r} is not a parameter of submitit's SlurmExecutor"
                f"{suggest(key, known)}; allowed: {', '.join(known)}"
            )
        try:
            out[key] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key] = value
    return out
