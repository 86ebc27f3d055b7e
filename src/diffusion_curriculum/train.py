"""The trainer: one loop, every strategy, exact resume.

The data path runs one way (DESIGN.md): batch x0 → ``sampler.sample`` → ``process.add_noise`` → model →
per-sample loss → × weighting × draw weight → mean → backward → AdamW (+ momentum schedule) → EMA; losses flow
back only through ``sampler.observe``. The trainer knows no strategy by name.

Determinism: the model is initialised from ``seed``; batches, timesteps and noise each come from their own
generator derived from (seed, stream name, rank); all of them, the global RNGs, the optimizer, the LR and momentum
schedules, the sampler and the EMA go into every checkpoint, so a resumed run continues the same streams and its
logged losses equal an unbroken run's to the bit on CPU.

Distributed data parallel (``torchrun --nproc_per_node N -m diffusion_curriculum train ...``, and multi-node
through torchrun's usual ``--nnodes``/``--rdzv-*`` options): when ``WORLD_SIZE`` > 1 the trainer initialises
the process group from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) — backend ``nccl`` on GPU (each process takes ``cuda:LOCAL_RANK``), ``gloo`` on CPU — wraps
the model in :class:`~torch.nn.parallel.DistributedDataParallel`, and destroys the group when the run ends.
A process group the caller initialised already is used as it is (and left alone at the end); PyTorch cannot
create the group from the same torchrun environment twice in one process, so code that trains several runs one
after another in the same processes initialises the group itself. Without ``WORLD_SIZE`` > 1 no process group
is created and a run is bit-identical to a plain single-process one.

* **Global batch.** ``batch_size`` is the *global* batch: each of the N processes trains on
  ``batch_size / N`` samples per step (a ``batch_size`` that N does not divide is a ConfigError). The ranks
  walk one shared index stream (:class:`data.Batcher`), so the union of their batches at every step is exactly
  the batch a single process with the same ``batch_size`` gets; gradients are averaged by DDP, so a step is
  the single-process step of that batch (up to floating-point summation order and the per-rank t/noise
  draws below).
* **Random streams.** Timesteps and noise come from per-rank streams, ``stream_seed(seed, name, rank)``
  (rank 0's are the single-process run's); the global torch RNG (dropout) is reseeded per rank after the
  model is built. The model itself is initialised identically on every rank (and DDP broadcasts rank 0's).
* **Samplers.** Every sampler decision that depends on losses is taken on globally reduced values (DDC's
  pacing on the all-reduced mean loss, the importance sampler's history on the all-gathered (t, loss) of
  every rank), so all ranks hold identical sampler state. The logged loss is the all-reduced mean, and a
  non-finite loss on any rank stops (or skips the step on) every rank alike.
* **Rank 0 writes.** Only rank 0 writes ``config.yaml``, ``metrics.jsonl``, the progress bar, TensorBoard,
  sample grids, evaluations (quality metrics included), ``summary.json`` and checkpoints; the other ranks
  wait for each checkpoint write (rank 0 broadcasts its outcome, so a failed write stops every rank with the
  same sentence instead of leaving them waiting). The noise-level histogram of an evaluation sums every rank's
  draws.
* **Resume.** A checkpoint holds the (identical) model, optimizer, schedules, sampler and data-stream state
  once, and the per-rank state — each rank's torch/numpy/python RNG, its timestep and noise generators (and
  CUDA RNG), its noise-level histogram — gathered by rank 0 under ``ranks/<r>`` with ``world_size``. On
  ``--resume`` rank 0 picks the checkpoint (falling back past unusable ones as in a single process) and every
  rank loads it and restores its own streams, so the resumed run's logged losses equal the unbroken run's
  (to the bit on CPU with gloo; NCCL reductions need not be bitwise deterministic).
  The run directory must therefore be on storage every node sees. Resuming with a different number of
  processes is refused with a ConfigError: the per-rank streams cannot be continued exactly then.
* **Interrupts and errors.** Ctrl-C (torchrun forwards SIGINT to every worker) is agreed on through the
  per-step loss all-reduce, so all ranks stop after the same step and save one checkpoint together. An error
  that one rank sees while the others would wait (rank 0's set-up of the run directory, a checkpoint that
  one rank cannot read or write) is shared, so every rank stops with the same sentence; a rank that dies
  otherwise makes torchrun stop the others. Collectives give up after
  ``DIFFUSION_CURRICULUM_DIST_TIMEOUT_MIN`` minutes (default 30), which must exceed rank 0's longest
  evaluation.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import checkpoint, config, data, generate, models, plots, timesteps, weighting
from . import process as process_mod
from .checks import atomic_write as _atomic_write
from .checks import first_line
from .errors import ConfigError

#: samples shown in a grid PNG (image data; 2-D points are all plotted)
GRID = 64

#: bins of the drawn-noise-level histogram logged at every evaluation
T_HIST_BINS = 20

#: keys that may change when a run is resumed (they do not change what is trained)
RESUMABLE_KEYS = (
    "steps",
    "eval_every",
    "checkpoint_every",
    "log_every",
    "keep_checkpoints",
    "device",
    "progress",
    "tensorboard",
    "eval",
    "metrics",
    "on_nonfinite",
)

#: errors a builder may raise for a parameter it does not check itself (a wrong type, an impossible size); each
#: is turned into one ConfigError sentence naming the section
_BUILD_ERRORS = (TypeError, RuntimeError, ArithmeticError, IndexError, KeyError, AttributeError, MemoryError)


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, say); the message names the step and what was kept."""


@dataclass
class Components:
    """What a configuration builds, before anything is written to disk."""

    process: Any
    dataset: data.Dataset
    model: nn.Module
    sampler: timesteps.TimestepSampler
    weight_fn: Callable


def _named(cfg: dict, section: str) -> tuple[str, dict]:
    sec = dict(cfg[section])
    return sec.pop("name"), sec


def _build(section: str, params: dict, fn: Callable, *args, **kwargs):
    """Call one builder. Its own ``ValueError`` already names the key and passes through; any other error on a
    parameter it does not check (a wrong type, an impossible size) becomes a ConfigError naming the section."""
    try:
        return fn(*args, **kwargs)
    except ValueError:
        raise
    except _BUILD_ERRORS as e:
        raise ConfigError(f"{section} settings {params!r} cannot be used: {first_line(e, 200)}") from None


def build_components(cfg: dict) -> Components:
    """Build process, data, model, sampler and weighting from a validated config; every error names its key."""
    pname, pparams = _named(cfg, "process")
    proc = _build("process", cfg["process"], process_mod.build, pname, **pparams)
    dname, dparams = _named(cfg, "dataset")
    dparams.setdefault("seed", cfg["seed"])
    dataset = _build("dataset", cfg["dataset"], data.load, dname, **dparams)
    mname, mparams = _named(cfg, "model")
    model = _build("model", cfg["model"], models.build, mname, dataset.shape, **mparams)
    sname, sparams = _named(cfg, "sampler")
    sparams.setdefault("total_steps", cfg["steps"])
    sampler = _build("sampler", cfg["sampler"], timesteps.build, sname, proc, **sparams)
    wname, wparams = _named(cfg, "weighting")
    weight_fn = _build(
        "weighting", cfg["weighting"], weighting.build, wname, proc, cfg["prediction"], **wparams
    )
    return Components(proc, dataset, model, sampler, weight_fn)


def stream_seed(seed: int, stream: str, rank: int = 0) -> int:
    """An independent 63-bit seed for one named random stream of one rank."""
    h = hashlib.sha256(f"{seed}/{stream}/{rank}".encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def resolve_device(name: str) -> torch.device:
    """The device a config's ``device`` names (``auto``: CUDA when available, else the CPU); a ConfigError for
    anything else or for a GPU that is not there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device={name!r} is not a device; allowed: auto, cpu, cuda, cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device={name!r} was asked for but no CUDA GPU is available; use device=cpu or auto"
        )
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={name!r} is not supported; allowed: auto, cpu, cuda, cuda:N")
    return dev


@dataclass
class DistContext:
    """Where this process stands in a data-parallel run: (0, 1, 0) in a single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    #: whether the trainer created the process group (and so destroys it at the end)
    owns_group: bool = False


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"environment variable {name}={raw!r} is not an integer; launch with torchrun, which sets it"
        ) from None


def dist_timeout() -> timedelta:
    """How long a rank waits in a collective (for rank 0's evaluation or checkpoint, say) before giving up:
    ``DIFFUSION_CURRICULUM_DIST_TIMEOUT_MIN`` minutes, default 30."""
    raw = os.environ.get("DIFFUSION_CURRICULUM_DIST_TIMEOUT_MIN", "") or "30"
    try:
        minutes = float(raw)
    except ValueError:
        minutes = -1.0
    if not (math.isfinite(minutes) and minutes > 0):
        raise ConfigError(
            f"DIFFUSION_CURRICULUM_DIST_TIMEOUT_MIN={raw!r} is invalid; allowed: a positive number of minutes"
        )
    return timedelta(minutes=minutes)


def setup_distributed(device_name: str) -> tuple[DistContext, torch.device]:
    """Join (or create, from torchrun's environment) the default process group; return it and this rank's
    device.

    An initialised default group is used as it is. Otherwise, when ``WORLD_SIZE`` > 1, the group is created
    from ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` (``env://``) with backend ``nccl`` for a
    GPU device and ``gloo`` for the CPU. On a GPU each rank takes ``cuda:LOCAL_RANK``. Without either, nothing
    is created: ``(DistContext(), resolve_device(device_name))``.
    """
    dist = torch.distributed
    device = resolve_device(device_name)
    initialised = dist.is_available() and dist.is_initialized()
    env_world = _env_int("WORLD_SIZE", 1)
    if not initialised and env_world <= 1:
        return DistContext(), device
    if not dist.is_available():
        raise ConfigError(
            f"WORLD_SIZE={env_world} asks for {env_world} processes but this PyTorch build has no "
            "torch.distributed; run a single process or install a PyTorch with distributed support"
        )
    if device.type == "cuda":
        if initialised:
            local = _env_int("LOCAL_RANK", dist.get_rank() % torch.cuda.device_count())
        else:
            local = _env_int("LOCAL_RANK", 0)
        world = dist.get_world_size() if initialised else env_world
        if device.index is not None and world > 1:
            raise ConfigError(
                f"device={device_name!r} names one GPU but this run has {world} processes; use device=cuda "
                "(or auto): each process takes cuda:LOCAL_RANK"
            )
        if not 0 <= local < torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={local} but only {torch.cuda.device_count()} GPU(s) are visible; start at most "
                "that many processes per node (torchrun --nproc_per_node)"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)  # before the group exists, so NCCL binds this rank to its own GPU
    else:
        local = _env_int("LOCAL_RANK", 0)
    if initialised:
        return DistContext(dist.get_rank(), dist.get_world_size(), local, owns_group=False), device
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=dist_timeout())
    return DistContext(dist.get_rank(), dist.get_world_size(), local, owns_group=True), device


#: errors a rank re-raises when another rank reports one (by class name); anything else becomes a RuntimeError
def _error_classes() -> dict[str, type[BaseException]]:
    return {
        "ConfigError": ConfigError,
        "CheckpointError": checkpoint.CheckpointError,
        "DataError": data.DataError,
        "TrainingError": TrainingError,
        "OSError": OSError,
    }


def _report(e: BaseException) -> tuple[str, str]:
    """(the nearest known error class name, the first line of the message), to send to the other ranks."""
    known = _error_classes()
    kind = next((c.__name__ for c in type(e).__mro__ if c.__name__ in known), type(e).__name__)
    return kind, first_line(e)


def _remote_error(report: tuple[str, str], rank: int) -> BaseException:
    kind, msg = report
    return _error_classes().get(kind, RuntimeError)(f"{msg} (reported by rank {rank})")


class LRSchedule(torch.optim.lr_scheduler.LRScheduler):
    """Linear warm-up then constant or cosine decay, written in *chainable* form (each step multiplies the
    current LR by f(s)/f(s−1)) so a momentum schedule that also scales the LR composes with it."""

    def __init__(self, optimizer, warmup_steps: int, total_steps: int, kind: str = "constant"):
        self.warmup_steps, self.total_steps, self.kind = warmup_steps, total_steps, kind
        super().__init__(optimizer)

    def factor(self, s: int) -> float:
        """The LR multiplier of step ``s``: linear warm-up to 1, then 1 (constant) or a cosine decay to 0."""
        f = min(1.0, (s + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.kind == "cosine" and s >= self.warmup_steps:
            span = max(1, self.total_steps - self.warmup_steps)
            f *= 0.5 * (1 + math.cos(math.pi * min(1.0, (s - self.warmup_steps) / span)))
        return f

    def get_lr(self):
        e = self.last_epoch
        prev = self.factor(e - 1) if e > 0 else 0.0
        if prev == 0.0:
            return [base * self.factor(e) for base in self.base_lrs]
        ratio = self.factor(e) / prev
        return [g["lr"] * ratio for g in self.optimizer.param_groups]


class Trainer:
    """Train one configuration into one run directory. Use :func:`train` for the common case.

    Under torchrun (``WORLD_SIZE`` > 1) every process builds a Trainer with the same config: ``batch_size`` is
    the global batch (split evenly over the processes), rank 0 alone writes the run directory, checkpoints
    hold every rank's random streams and a resume needs the same number of processes (the module docstring
    has the details). :meth:`state`, :meth:`save_checkpoint`, :meth:`train_step`, :meth:`advance`,
    :meth:`evaluate` and :meth:`run` are then collective: every rank calls them, in the same order.
    """

    def __init__(
        self,
        cfg: dict,
        out_dir: str | Path,
        *,
        resume: bool = False,
        log: Callable[[str], None] | None = None,
    ):
        self.cfg = config.validate(cfg)
        self.out = Path(out_dir)
        self.dist, self.device = setup_distributed(cfg["device"])
        self.rank, self.world = self.dist.rank, self.dist.world
        say = log or (lambda msg: print(msg, file=sys.stderr))
        self.say = say if self.rank == 0 else (lambda msg: None)
        try:
            self._setup(cfg, resume)
        except BaseException:
            self.close()
            raise

    def _setup(self, cfg: dict, resume: bool) -> None:
        if cfg["batch_size"] % self.world:
            raise ConfigError(
                f"batch_size={cfg['batch_size']} is the global batch and must split evenly over the "
                f"{self.world} processes; use a multiple of {self.world}"
            )
        prec = cfg["precision"]
        self.bf16 = prec == "bf16" or (prec == "auto" and self.device.type == "cuda")
        if cfg["tensorboard"]:
            import importlib.util

            if importlib.util.find_spec("tensorboard") is None:
                raise ConfigError(
                    "tensorboard=true needs the tensorboard package: pip install 'diffusion_curriculum[tensorboard]'"
                )

        seed = cfg["seed"]
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        c = build_components(cfg)  # every config error surfaces here, before anything is written
        self.process, self.dataset, self.sampler, self.weight_fn = (
            c.process,
            c.dataset,
            c.sampler,
            c.weight_fn,
        )
        self.model = c.model.to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        #: what the training forward calls: the model, or its DistributedDataParallel wrapper
        self.net: nn.Module = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            # every rank built the same model from the same seed; DDP also broadcasts rank 0's weights.
            # The global RNG (dropout) then gets a stream of its own per rank.
            torch.manual_seed(stream_seed(seed, "torch", self.rank))
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.n_params = models.count_parameters(self.model)
        oc = cfg["optim"]
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=cfg["lr"],
            betas=(oc["beta1"], oc["beta2"]),
            eps=oc["eps"],
            weight_decay=oc["weight_decay"],
            foreach=self.device.type == "cuda" or None,
        )
        self.lr_schedule = LRSchedule(self.optimizer, oc["warmup_steps"], cfg["steps"], oc["schedule"])
        self.momentum = self._build_momentum(cfg["momentum"])
        self.batcher = data.Batcher(
            self.dataset,
            cfg["batch_size"] // self.world,  # this rank's share; the global batch is batch_size
            stream_seed(seed, "data"),
            rank=self.rank,
            world_size=self.world,
            device=self.device,
        )
        self.t_gen = torch.Generator().manual_seed(stream_seed(seed, "timesteps", self.rank))
        self.noise_gen = torch.Generator(device=self.device).manual_seed(
            stream_seed(seed, "noise", self.rank)
        )
        self.step = 0
        self.loss_sum, self.loss_count, self.skipped = 0.0, 0, 0
        self.train_time = 0.0
        self.eval_hooks: list[Callable[[Trainer, torch.Tensor, int], dict]] = []
        mc = cfg["metrics"]
        if mc["enabled"] and self.rank == 0:
            from . import metrics

            # the feature net's seed is fixed (not the run's) so quality numbers compare across seeds and runs
            evaluator = metrics.Evaluator(
                self.dataset,
                seed=0,
                n_real=mc["n_real"],
                inception_weights=mc["inception_weights"],
                device=self.device,
            )
            self.eval_hooks.append(lambda trainer, samples, step: evaluator(samples))
        self.t_hist = torch.zeros(T_HIST_BINS, dtype=torch.long, device=self.device)
        self.last_eval: dict[str, Any] = {}
        self._eval_step: int | None = None  # the step of the last evaluation (on every rank)
        self._saved_step: int | None = None
        self._sigints = 0  # Ctrl-C presses seen by this process during run()
        self._stop_all = False  # whether any rank asked to stop (agreed in the step's loss all-reduce)
        self._tb = None
        self._bar = None
        self._t_log, self._s_log = time.perf_counter(), 0
        self._ema_params = [p for p in self.ema.parameters()]
        self._model_params = [p for p in self.model.parameters()]
        self._buffer_pairs = list(zip(self.ema.buffers(), self.model.buffers()))  # listed once: not per step
        self._prepare_dir(resume)

    # -- set-up ---------------------------------------------------------------------------------------
    def _build_momentum(self, mcfg: dict):
        params = dict(mcfg)
        if not params.pop("enabled", False):
            return None
        from . import optim

        params.setdefault("total_steps", self.cfg["steps"])
        return optim.build_momentum(self.optimizer, **params)

    def _prepare_dir(self, resume: bool) -> None:
        self.ckpt_dir = self.out / "checkpoints"
        self.metrics_path = self.out / "metrics.jsonl"
        if self.world == 1:
            loaded = self._prepare_dir_rank0(resume)
            if loaded is not None:
                self._truncate_metrics(loaded[1])
            _atomic_write(self.out / "config.yaml", config.dump(self.cfg))
            return
        # rank 0 checks and prepares the directory and picks the checkpoint; the others load that one; any
        # failure is shared, so every rank stops with the same sentence instead of waiting for the others
        loaded, err = None, None
        if self.rank == 0:
            try:
                loaded = self._prepare_dir_rank0(resume)
            except Exception as e:
                err = e
        loaded = self._from_rank0(loaded, err)
        err = None
        if self.rank != 0 and loaded is not None:
            try:
                _, state = checkpoint.load(loaded[0])
                self.load_state(state)
            except checkpoint.CheckpointError as e:
                err = checkpoint.CheckpointError(
                    f"rank {self.rank} cannot use {str(loaded[0])!r}, which rank 0 resumed from ({e}); the run "
                    "directory must be on storage every node sees"
                )
            except Exception as e:
                err = e
        self._all_ok(err)
        if self.rank == 0:
            if loaded is not None:
                self._truncate_metrics(loaded[1])
            _atomic_write(self.out / "config.yaml", config.dump(self.cfg))

    def _prepare_dir_rank0(self, resume: bool) -> tuple[Path, int] | None:
        """Check and prepare the run directory; on resume load the newest usable checkpoint and return its
        (path, step), else ``None``."""
        if resume:
            for p in checkpoint.remove_leftovers(self.ckpt_dir):
                self.say(f"tidied {p.name}, left behind by an interrupted checkpoint write")
        existing = checkpoint.list_checkpoints(self.ckpt_dir)
        if not resume and (existing or self.metrics_path.exists()):
            raise ConfigError(
                f"run directory {str(self.out)!r} already holds a run; pass --resume to continue it, "
                "or choose another --out"
            )
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "samples").mkdir(exist_ok=True)
        if resume:
            return self._resume(existing)
        self.metrics_path.unlink(missing_ok=True)
        return None

    def _resume(self, existing: list[Path]) -> tuple[Path, int] | None:
        errors = []
        for path in existing:
            try:
                step, state = checkpoint.load(path)
                self.load_state(state)
            except checkpoint.CheckpointError as e:
                errors.append(f"{path.name}: {e}")
                self.say(f"warning: {path.name} is unusable ({e}); trying the previous checkpoint")
                continue
            note = "" if path == existing[0] else ", the newest usable checkpoint"
            self.say(f"resumed from {path.name}{note}")
            return path, step
        if existing:
            raise checkpoint.CheckpointError(
                f"no usable checkpoint in {str(self.ckpt_dir)!r} (newest: {errors[0]}); "
                "move them away to start over"
            )
        self.say(f"no checkpoint in {str(self.ckpt_dir)!r}; starting from step 0")
        self.metrics_path.unlink(missing_ok=True)
        return None

    def _truncate_metrics(self, step: int) -> None:
        """Keep only whole lines logged at or before the resumed step (drops a torn last line too)."""
        kept = [r for r in plots.read_metrics(self.metrics_path) if r["step"] <= step]
        _atomic_write(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    # -- processes ------------------------------------------------------------------------------------
    def _from_rank0(self, value: Any, err: BaseException | None) -> Any:
        """Rank 0's ``value`` on every rank, or rank 0's error ``err`` raised on every rank (a collective)."""
        msg = [value, None if err is None else _report(err)]
        torch.distributed.broadcast_object_list(msg, src=0)
        if err is not None:
            raise err
        if msg[1] is not None:
            raise _remote_error(msg[1], 0)
        return msg[0]

    def _all_ok(self, err: BaseException | None) -> None:
        """Raise on every rank if any rank's part failed: its own error, else the first failing rank's."""
        reports: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(reports, None if err is None else _report(err))
        if err is not None:
            raise err
        for r, rep in enumerate(reports):
            if rep is not None:
                raise _remote_error(rep, r)

    def close(self) -> None:
        """Destroy the process group if this trainer created it (from torchrun's environment); :meth:`run`
        calls this at its end. A group the caller created is left alone."""
        if self.dist.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        self.dist.owns_group = False

    # -- state ----------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything a resume needs, as nested plain values and tensors (see :mod:`checkpoint`).

        With several processes this is a collective: rank 0 gathers every other rank's own state (RNG
        streams, noise-level histogram) under ``ranks/<r>`` and returns the whole; the other ranks get back
        their local state only."""
        rng = self._rng_state()
        s = {
            "step": self.step,
            "fingerprint": self.fingerprint(),
            "world_size": self.world,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "momentum": self.momentum.state_dict() if self.momentum else None,
            "sampler": self.sampler.state_dict(),
            "batcher": self.batcher.state_dict(),
            "rng": rng,
            "log": {
                "loss_sum": self.loss_sum,
                "loss_count": self.loss_count,
                "skipped": self.skipped,
                "train_time": self.train_time,
                "t_hist": self.t_hist,
            },
        }
        if self.world > 1:
            mine = {"rng": rng, "t_hist": self.t_hist.cpu()}
            gathered: list[Any] | None = [None] * self.world if self.rank == 0 else None
            torch.distributed.gather_object(mine, gathered, dst=0)
            if gathered is not None:
                s["ranks"] = {str(r): g for r, g in enumerate(gathered) if r != 0}
        return s

    def _rng_state(self) -> dict[str, Any]:
        rng = {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "t_gen": self.t_gen.get_state(),
            "noise_gen": self.noise_gen.get_state(),
        }
        if torch.cuda.is_available() and self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def fingerprint(self) -> str:
        """A hash of the settings that decide what is trained: a checkpoint from other settings is refused."""
        fixed = {k: v for k, v in self.cfg.items() if k not in RESUMABLE_KEYS}
        return hashlib.sha256(json.dumps(fixed, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def load_state(self, s: dict[str, Any]) -> None:
        """Continue from a :meth:`state` (this rank's part of it); a CheckpointError if it does not fit this
        run, a ConfigError if it was written by another number of processes."""
        try:
            if s.get("fingerprint") != self.fingerprint():
                raise checkpoint.CheckpointError(
                    "it was written with different settings (model, data, strategy or optimizer) "
                    "than this run's config.yaml"
                )
            saved_world = int(s.get("world_size", 1))
            if saved_world != self.world:
                raise ConfigError(
                    f"the checkpoint of step {s['step']} was written by {saved_world} process(es) but this run "
                    f"has {self.world}; resume with {saved_world} (e.g. torchrun --nproc_per_node "
                    f"{saved_world} on one node): each process's random streams are saved, so a resume is "
                    "exact only with the same number of processes"
                )
            rng, t_hist = s["rng"], s["log"]["t_hist"]
            if self.rank != 0:
                mine = s["ranks"][str(self.rank)]
                rng, t_hist = mine["rng"], mine["t_hist"]
            self.model.load_state_dict(s["model"])
            self.ema.load_state_dict(s["ema"])
            self.optimizer.load_state_dict(s["optimizer"])
            self.lr_schedule.load_state_dict(s["lr_schedule"])
            if self.momentum is not None:
                self.momentum.load_state_dict(s["momentum"])
            self.sampler.load_state_dict(s["sampler"])
            self.batcher.load_state_dict(s["batcher"])
            torch.set_rng_state(rng["torch"])
            st = rng["numpy"]
            np.random.set_state((st[0], np.asarray(st[1].numpy(), dtype=np.uint32), *st[2:]))
            random.setstate(rng["python"])
            self.t_gen.set_state(rng["t_gen"])
            self.noise_gen.set_state(rng["noise_gen"])
            if "cuda" in rng and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.device)
            lg = s["log"]
            self.loss_sum, self.loss_count = float(lg["loss_sum"]), int(lg["loss_count"])
            self.skipped, self.train_time = int(lg["skipped"]), float(lg["train_time"])
            self.t_hist.copy_(t_hist)
            self.step = self._saved_step = int(s["step"])
        except (checkpoint.CheckpointError, ConfigError):
            raise
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as e:
            raise checkpoint.CheckpointError(f"it does not fit this run ({first_line(e, 200)})") from None

    def save_checkpoint(self) -> Path:
        """Write a checkpoint of this step (rank 0 writes; the other ranks wait for the write's outcome)."""
        state = self.state()
        if self.world == 1:
            path = checkpoint.save(self.ckpt_dir, self.step, state, keep=self.cfg["keep_checkpoints"])
        else:
            path, err = None, None
            if self.rank == 0:
                try:
                    path = checkpoint.save(self.ckpt_dir, self.step, state, keep=self.cfg["keep_checkpoints"])
                except Exception as e:
                    err = e
            path = self._from_rank0(path, err)
        self._saved_step = self.step
        return path

    # -- the step -------------------------------------------------------------------------------------
    def train_step(self) -> torch.Tensor | None:
        """One optimizer step; returns the batch's per-sample losses (``None`` if a non-finite step was skipped)."""
        cfg = self.cfg
        x0 = self.batcher.next()
        draw = self.sampler.sample(x0.shape[0], device=self.device, generator=self.t_gen)
        noise = torch.randn(x0.shape, generator=self.noise_gen, device=self.device)
        x_t = self.process.add_noise(x0, noise, draw.t)
        x_in, t_in = self.process.model_input(x_t, draw.t)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.net(x_in, t_in)
        target = self.process.target(x0, noise, draw.t, cfg["prediction"], x_t)
        per_sample = (out.float() - target).pow(2).flatten(1).mean(1)
        loss = (self.weight_fn(draw.t) * draw.weight * per_sample).mean()
        # one sync per step: needed to catch a non-finite loss before it reaches the weights
        value = float(loss.detach()) if self.world == 1 else self._reduce_loss(loss)
        if not math.isfinite(value):
            if cfg["on_nonfinite"] != "skip":
                raise TrainingError(
                    f"the loss became {value} at step {self.step + 1}; the last good checkpoint is kept in "
                    f"{str(self.ckpt_dir)!r}. Lower lr, check the data, or set on_nonfinite=skip"
                )
            # on_nonfinite=skip: the step is spent (the data, timestep and noise streams moved on, and the LR
            # and momentum schedules follow the step count) but nothing learns from it: no optimizer update,
            # no EMA update, no sampler.observe, no loss or histogram entry
            self.lr_schedule.step()
            if self.momentum is not None:
                self.momentum.step()
            self.step += 1
            self.skipped += 1
            return None
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg["optim"]["grad_clip"] > 0:
            nn.utils.clip_grad_norm_(self._model_params, cfg["optim"]["grad_clip"])
        self.optimizer.step()
        self.lr_schedule.step()
        if self.momentum is not None:
            self.momentum.step()
        self._update_ema()
        self.sampler.observe(draw.t, per_sample.detach())
        self.t_hist += torch.bincount(self._t_bin(draw.t), minlength=T_HIST_BINS)
        self.step += 1
        self.loss_sum += value
        self.loss_count += 1
        return per_sample

    def _reduce_loss(self, loss: torch.Tensor) -> float:
        """The mean loss over all ranks (one all-reduce), so every rank logs it and takes the same decision on a
        non-finite value; the same all-reduce tells whether any rank was asked to stop (Ctrl-C)."""
        stat = torch.stack(
            [loss.detach().float(), loss.new_tensor(float(self._sigints > 0), dtype=torch.float32)]
        )
        torch.distributed.all_reduce(stat)
        total, stops = stat.tolist()
        self._stop_all = stops > 0
        return total / self.world

    @torch.no_grad()
    def _update_ema(self) -> None:
        """EMA of the weights with warm-up: decay_s = min(decay, (1 + s)/(warmup + s)) (as in Tarvainen & Valpola
        2017 / TF's ExponentialMovingAverage ``num_updates``), so early averages are not dominated by the init."""
        ec = self.cfg["ema"]
        s = self.step
        decay = min(ec["decay"], (1 + s) / (ec["warmup"] + s))
        torch._foreach_lerp_(self._ema_params, self._model_params, 1.0 - decay)
        for b_ema, b in self._buffer_pairs:
            b_ema.copy_(b)

    def _t_bin(self, t: torch.Tensor) -> torch.Tensor:
        """Histogram bin of each drawn noise level: t·bins/T (discrete), or ln σ over [σ_min, σ_max] (EDM)."""
        if not self.process.continuous:
            return t * T_HIST_BINS // self.process.T
        lo, hi = math.log(self.process.sigma_min), math.log(self.process.sigma_max)
        u = (t.float().log() - lo) / (hi - lo)
        return (u * T_HIST_BINS).long().clamp_(0, T_HIST_BINS - 1)

    def _t_hist_record(self) -> dict[str, Any]:
        if not self.process.continuous:
            edges = [i * self.process.T / T_HIST_BINS for i in range(T_HIST_BINS + 1)]
            unit = "t"
        else:
            lo, hi = math.log(self.process.sigma_min), math.log(self.process.sigma_max)
            edges = [lo + (hi - lo) * i / T_HIST_BINS for i in range(T_HIST_BINS + 1)]
            unit = "ln sigma"
        rec = {"t_hist": self.t_hist.tolist(), "t_hist_edges": edges, "t_hist_unit": unit}
        self.t_hist.zero_()
        return rec

    # -- evaluation -----------------------------------------------------------------------------------
    @torch.no_grad()
    def eval_loss(self, n: int = 512) -> float:
        """The EMA model's mean denoising loss on a fixed batch with fixed t and noise (comparable across
        steps and runs with the same seed)."""
        g = torch.Generator().manual_seed(self.cfg["eval"]["seed"])
        x0 = self.dataset.data[:n].to(self.device)
        t = timesteps.build("uniform", self.process).sample(x0.shape[0], device=self.device, generator=g).t
        noise = torch.randn(x0.shape, generator=g).to(self.device)
        x_t = self.process.add_noise(x0, noise, t)
        out = self.ema(*self.process.model_input(x_t, t))
        target = self.process.target(x0, noise, t, self.cfg["prediction"], x_t)
        return float((out.float() - target).pow(2).mean())

    @torch.no_grad()
    def generate(self, n: int | None = None) -> torch.Tensor:
        """``n`` samples (default ``eval.samples``) from the EMA model with the run's evaluation sampler and seed."""
        ec = self.cfg["eval"]
        return generate.sample(
            self.ema,
            self.process,
            n or ec["samples"],
            self.dataset.shape,
            method=ec["method"],
            steps=ec["steps"],
            eta=ec["eta"],
            prediction=self.cfg["prediction"],
            seed=ec["seed"],
            device=self.device,
            batch_size=ec["batch_size"],
        )

    def evaluate(self) -> dict[str, Any]:
        """Sample a grid, measure the EMA model, log the record (with the noise-level histogram since the last
        evaluation) and return it. With several processes only rank 0 evaluates (the others return ``{}``);
        the histogram sums every rank's draws."""
        self._eval_step = self.step
        if self.world > 1:
            torch.distributed.all_reduce(self.t_hist)
            if self.rank != 0:
                self.t_hist.zero_()
                return {}
        samples = self.generate()
        shown = samples if self.dataset.kind == "points" else samples[:GRID]
        data.save_grid(shown, self.out / "samples" / f"step_{self.step:08d}.png")
        rec: dict[str, Any] = {"step": self.step, "eval_loss": self.eval_loss()}
        for hook in self.eval_hooks:
            rec.update(hook(self, samples, self.step))
        self.last_eval = dict(rec)
        rec.update(self._t_hist_record())
        self._log(rec)
        if self.rank == 0:
            plots.timestep_plots(
                plots.read_metrics(self.metrics_path),
                self.out / "timesteps.png",
                title=f"noise levels drawn ({self.sampler.name})",
            )
        return rec

    # -- logging --------------------------------------------------------------------------------------
    def _log(self, rec: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, rec["step"])

    # -- the loop -------------------------------------------------------------------------------------
    def advance(self) -> None:
        """One iteration of :meth:`run`: a training step, then the logging, evaluation and checkpoint cadence.
        ``train_time`` counts the training steps only, so steps/s is not diluted by evaluations."""
        cfg = self.cfg
        t0 = time.perf_counter()
        self.train_step()
        self.train_time += time.perf_counter() - t0
        if self._bar is not None:
            self._bar.update(1)
        if self.step % cfg["log_every"] == 0:
            now = time.perf_counter()
            rec = {
                "step": self.step,
                "loss": self.loss_sum / max(1, self.loss_count),
                "lr": self.optimizer.param_groups[0]["lr"],
                "steps_per_s": (self.step - self._s_log) / max(now - self._t_log, 1e-9),
                "skipped": self.skipped,
            }
            if self.loss_count == 0:  # every step of the interval was skipped: there is no loss to report
                rec["loss"] = None
            status = self.sampler.status()
            if status:
                rec["sampler"] = status
            self._log(rec)
            if self._bar is not None:
                shown = "skipped" if rec["loss"] is None else f"{rec['loss']:.4f}"
                self._bar.set_postfix(loss=shown, **status, refresh=False)
            self.loss_sum, self.loss_count = 0.0, 0
            self._t_log, self._s_log = now, self.step
        if cfg["eval_every"] and self.step % cfg["eval_every"] == 0:
            self.model.eval()
            self.evaluate()
            self.model.train()
        if cfg["checkpoint_every"] and self.step % cfg["checkpoint_every"] == 0:
            self.save_checkpoint()

    def run(self) -> dict[str, Any]:
        """Train to ``steps``, evaluate, checkpoint and write ``summary.json``; return the summary. Ends by
        destroying the process group if this trainer created it."""
        try:
            return self._run()
        finally:
            self.close()

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        steps = cfg["steps"]
        if cfg["tensorboard"] and self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out / "tensorboard"))
        from tqdm import tqdm

        self._bar = tqdm(
            total=steps,
            initial=self.step,
            unit="step",
            dynamic_ncols=True,
            mininterval=1.0,
            disable=not cfg["progress"] or self.rank != 0,
            file=sys.stderr,
        )
        self.model.train()
        self._t_log, self._s_log = time.perf_counter(), self.step
        # Ctrl-C is taken at a step boundary: a KeyboardInterrupt raised mid-step (after the batch or the
        # timesteps were drawn, or the optimizer stepped, but before the step count moved) would save a state that
        # does not match its step, and the resumed run would silently diverge. A second Ctrl-C stops at once.
        # With several processes the ranks agree on the step to stop after (see _reduce_loss), so they save
        # one checkpoint together.
        self._sigints, self._stop_all = 0, False

        def on_sigint(signum, frame):
            self._sigints += 1
            if self._sigints > 1:
                raise KeyboardInterrupt

        def stop_asked() -> bool:
            return self._sigints > 0 if self.world == 1 else self._stop_all

        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            while self.step < steps:
                self.advance()
                if stop_asked():
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            self._bar.close()
            if self._sigints > 1:  # stopped mid-step: this state is not a consistent one to save
                self.say(
                    f"interrupted twice, mid-step; nothing saved; continue with --resume from the last "
                    f"checkpoint in {str(self.ckpt_dir)!r}"
                )
            elif self.step > 0 and self._saved_step != self.step:
                path = self.save_checkpoint()
                self.say(f"interrupted at step {self.step}; saved {path}; continue with --resume")
            elif self.step > 0:  # the checkpoint of this very step is already on disk: do not rewrite it
                path = checkpoint.step_dir(self.ckpt_dir, self.step)
                self.say(f"interrupted at step {self.step}; {path} is saved; continue with --resume")
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        self._bar.close()
        if self._eval_step != self.step:
            self.model.eval()
            self.evaluate()
        if self._saved_step != self.step:
            self.save_checkpoint()  # the last collective of the run
        summary = {
            "steps": self.step,
            "final_loss": None,
            "final_eval": self.last_eval,
            "train_time_s": self.train_time,
            "steps_per_s": self.step / max(self.train_time, 1e-9),
            "parameters": self.n_params,
            "skipped_steps": self.skipped,
            "device": str(self.device),
            "processes": self.world,
        }
        if self.rank == 0:
            data.save_grid(
                self.generate(None if self.dataset.kind == "points" else GRID),
                self.out / "samples" / "final.png",
            )
            summary["final_loss"] = self._last_logged_loss()
            _atomic_write(self.out / "summary.json", json.dumps(summary, indent=2))
        if self._tb is not None:
            self._tb.close()
        return summary

    def _last_logged_loss(self) -> float | None:
        losses = [r["loss"] for r in plots.read_metrics(self.metrics_path) if r.get("loss") is not None]
        return losses[-1] if losses else None


def train(cfg: dict, out_dir: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg`` (a resolved config, see :func:`config.resolve`) into ``out_dir``; return the summary."""
    return Trainer(cfg, out_dir, resume=resume).run()
