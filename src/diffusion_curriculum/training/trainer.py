"""The training loop: set-up, the step, checkpoints and the run (see :mod:`training` for the determinism and
data-parallel contract; the evaluation is :mod:`.evaluation`'s)."""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import checkpoint, config, data, models
from ..checks import first_line
from ..ema import EMA
from ..errors import ConfigError, Interrupted, TrainingError
from ..loss import DenoisingLoss
from . import components, conditioning, hooks
from . import distributed as dist_mod
from . import step as step_mod
from .distributed import setup_distributed
from .evaluation import GRID, Evaluation
from .rundir import RunDir
from .state import (
    Attributes,
    Merged,
    RandomStreams,
    StateRegistry,
    check_fits,
    fingerprint,
    legacy_fingerprints,
    unrecorded_choice_hint,
    with_choices,
)
from .val_loss import Validator


class Trainer(Evaluation):
    """Train one configuration into one run directory. Use :func:`train` for the common case.

    Under torchrun (``WORLD_SIZE`` > 1) every process builds a Trainer with the same config: ``batch_size`` is
    the global batch (split evenly over the processes), rank 0 alone writes the run directory, checkpoints
    hold every rank's random streams and a resume needs the same number of processes (the :mod:`training`
    docstring has the details). :meth:`state`, :meth:`save_checkpoint`, :meth:`train_step`, :meth:`advance`,
    :meth:`evaluate` and :meth:`run` are then collective: every rank calls them, in the same order.

    Extension points: :attr:`hooks` (:class:`~.hooks.Hook` objects called at each step and log record),
    :attr:`eval_hooks` (``(trainer, samples, step) -> dict`` merged into each evaluation's record) and
    :attr:`parts` (the registry of resumable state: one ``register`` line per new stateful part).
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
        say = log or hooks.stderr_line
        self.say = say if self.rank == 0 else (lambda msg: None)
        try:
            self._setup(cfg, resume)
        except BaseException:
            self.close()
            raise

    # -- set-up ---------------------------------------------------------------------------------------
    def _check_settings(self, cfg: dict) -> None:
        b, w, a = cfg["batch_size"], self.world, cfg["accumulate"]
        m = w * a
        if b % m:
            lo, hi = b // m * m, (b // m + 1) * m
            unit = "per process" if a == 1 else "per micro-batch"
            nearest = f"{lo} or {hi} ({lo // m} or {hi // m} {unit})" if lo else f"{hi} ({hi // m} {unit})"
            over = f"the {w} processes" + (f" x {a} accumulated micro-batches" if a > 1 else "")
            raise ConfigError(
                f"batch_size={b} is the global batch and must split evenly over {over}; use a multiple of {m}, "
                f"the nearest being {nearest}"
            )
        hooks.check_loggers(cfg)

    def _setup(self, cfg: dict, resume: bool) -> None:
        self._check_settings(cfg)
        self.bf16 = components.use_bf16(cfg["precision"], self.device)
        #: micro-batches per optimizer step (``accumulate``): each rank's batch is split into this many
        self.accumulate = cfg["accumulate"]
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = cfg["cudnn_benchmark"]
        seed = cfg["seed"]
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        c = components.build_components(cfg)  # every config error surfaces here, before anything is written
        self.cfg = with_choices(self.cfg, c.dataset)  # what the data loader chose: later loads repeat it
        if c.dataset.note:  # what the loader chose for the user (e.g. grayscale detected): the first line
            self.say(c.dataset.note)
        self.process, self.dataset = c.process, c.dataset
        self.sampler, self.weight_fn, self.clip = c.sampler, c.weight_fn, c.clip
        #: which noise each sample is paired with (``noise``; default ``gaussian``, the independent draw)
        self.noise = c.noise
        #: label dropout of a class-conditional run (a random stream of its own), or None: unconditional
        self.label_dropout = conditioning.build(cfg, c.num_classes, seed, self.rank)
        self.loss = DenoisingLoss(self.process, cfg["prediction"], self.weight_fn)
        if getattr(self.sampler, "needs_floor", False):
            self.sampler.set_floor(components.sampler_floor(cfg, self.sampler, self.dataset, self.process))
        self.model = c.model.to(self.device)
        self._model_params = list(self.model.parameters())  # listed once: not per step
        self.averager = EMA(self.model, cfg["ema"]["decay"], cfg["ema"]["warmup"])
        #: the averaged model, for evaluation and generation
        self.ema = self.averager.model
        #: what the training forward calls: the model, or its DistributedDataParallel wrapper
        self.net: nn.Module = self.model
        if self.world > 1:
            # every rank built the same model from the same seed; DDP also broadcasts rank 0's weights.
            # The global RNG (dropout) then gets a stream of its own per rank.
            torch.manual_seed(components.stream_seed(seed, "torch", self.rank))
            self.net = dist_mod.wrap(self.model, self.device)
        self.n_params = models.count_parameters(self.model)
        self._weighting_params = components.learned_weighting(self.weight_fn, self.device)
        self._grad_params = self._model_params + list(self._weighting_params)
        self.optimizer = components.build_optimizer(cfg, self.model, self.device, self._weighting_params)
        self.lr_schedule = components.build_lr_schedule(cfg, self.optimizer)
        self.momentum = components.build_momentum(cfg, self.optimizer)
        self._setup_streams(cfg)
        self._setup_logging(cfg)
        self._setup_state()
        self._prepare_dir(resume)

    def _setup_streams(self, cfg: dict) -> None:
        seed = cfg["seed"]
        self.batcher = data.Batcher(
            self.dataset,
            cfg["batch_size"] // self.world,  # this rank's share; the global batch is batch_size
            components.stream_seed(seed, "data"),
            rank=self.rank,
            world_size=self.world,
            device=self.device,
        )
        self.t_gen = torch.Generator().manual_seed(components.stream_seed(seed, "timesteps", self.rank))
        self.noise_gen = torch.Generator(device=self.device).manual_seed(
            components.stream_seed(seed, "noise", self.rank)
        )
        self.step, self.train_time = 0, 0.0
        #: the loss statistics since the last log record, on the device (read at log points only)
        self.stats = step_mod.StepStats(self.device)

    def _setup_logging(self, cfg: dict) -> None:
        self.rundir = RunDir(self.out)
        self.ckpt_dir, self.metrics_path = self.rundir.ckpt_dir, self.rundir.metrics_path
        self.histogram = hooks.NoiseHistogram(self.process, self.device)
        #: the drawn-noise-level counts since the last evaluation (the histogram's tensor, updated in place)
        self.t_hist = self.histogram.counts
        #: called at every step and log record, in order (see :mod:`.hooks`); append your own
        self.hooks: list[hooks.Hook] = [self.histogram]
        if self.rank == 0:
            self.hooks.append(hooks.JsonlLog(self.rundir))
        self._run_hooks: list[hooks.Hook] = []  # the hooks of one run() (TensorBoard, the progress bar)
        self._bar: hooks.ProgressBar | None = None
        self.eval_hooks: list[Callable[[Trainer, torch.Tensor, int], dict]] = []
        if self._weighting_params and self.rank == 0:
            self.hooks.append(hooks.WeightingLog(self.weight_fn, self.process))
        if cfg["metrics"]["enabled"] and self.rank == 0:
            self.hooks.append(hooks.QualityMetrics(self.dataset, cfg["metrics"], self.device, self.say))
        self.last_eval: dict[str, Any] = {}
        #: the fixed per-noise-level validation loss scored at every evaluation (``val_*`` keys)
        self.validator = Validator(
            cfg["eval"],
            self.dataset,
            self.loss,
            self.device,
            self.out,
            conditional=self.label_dropout is not None,
            say=self.say,
        )
        self._eval_step: int | None = None  # the step of the last evaluation (on every rank)
        #: how many of the last evaluation's samples this rank made (its share; :mod:`.evaluation`)
        self.eval_share = 0
        self._saved_step: int | None = None
        self.interrupts = hooks.InterruptGuard(self.say)
        self._t_log, self._s_log = time.perf_counter(), 0
        self._t_mark = self._t_log  # when the training time counted so far ends (a sync point)

    def _setup_state(self) -> None:
        """Register every resumable part, in the order (and under the names) a checkpoint stores them."""
        self.parts = StateRegistry()
        self.parts.register("model", self.model)
        self.parts.register("ema", self.averager)
        self.parts.register("optimizer", self.optimizer)
        self.parts.register("lr_schedule", self.lr_schedule)
        self.parts.register("momentum", self.momentum)
        # a sampler's losses of the window in flight are this rank's own (DDC's joint sampler holds its own too)
        in_flight = tuple(k for k in ("observations", "joint") if k in self.sampler.state_dict())
        self.parts.register("sampler", self.sampler, local=in_flight)
        if self._weighting_params:  # only a learned weighting has state; other checkpoints stay as they were
            self.parts.register("weighting", self.weight_fn)
        self.parts.register("batcher", self.batcher)
        self.parts.register("rng", RandomStreams(self.t_gen, self.noise_gen, self.device), local=True)
        if self.label_dropout is not None:  # only a conditional run has a label-dropout stream
            self.parts.register("label_dropout", self.label_dropout, local=True)
        # the keys a checkpoint has always had: the loss sums since the last log record (on the device) and the rest
        log = Merged(self.stats, Attributes(self, "train_time", "t_hist"))
        self.parts.register("log", log, local=("t_hist", "loss_sum", "loss_count", "skipped"))

    def _prepare_dir(self, resume: bool) -> None:
        """Check and prepare the run directory; on resume load the newest usable checkpoint (rank 0 picks it)."""
        self.rundir.load_device = self.device  # weights and optimizer state go straight onto it
        if self.world == 1:
            loaded = self.rundir.start(resume, self.load_state, self.say)
        else:
            # rank 0 checks and prepares the directory and picks the checkpoint; the others load that one; any
            # failure is shared, so every rank stops with the same sentence instead of waiting for the others
            start = lambda: self.rundir.start(resume, self.load_state, self.say)  # noqa: E731
            loaded = dist_mod.run_on_rank0(start, self.rank)
            follow = dist_mod.follow_rank0(loaded, self.rank, self.load_state, self.device)
            dist_mod.all_ok(follow, self.world)
        if self.rank == 0:
            if loaded is not None:
                self.rundir.truncate_metrics(loaded[1])
            self.rundir.write_config(self.cfg)
            #: the run's tracker id (W&B): new for a run started here, the kept one on a resume
            self.run_id = self.rundir.run_id(fresh=loaded is None)

    def close(self) -> None:
        """Destroy the process group if this trainer created it (from torchrun's environment); :meth:`run`
        calls this at its end. A group the caller created is left alone."""
        dist_mod.close(self.dist)

    # -- state ----------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything a resume needs, as nested plain values and tensors (see :mod:`checkpoint`).

        With several processes this is a collective: rank 0 gathers every other rank's own state (RNG
        streams, noise-level histogram) under ``ranks/<r>`` and returns the whole; the other ranks get back
        their local state only."""
        s = {
            "step": self.step,
            "fingerprint": self.fingerprint(),
            "world_size": self.world,
            **self.parts.state_dict(),
        }
        if self.world > 1:
            gathered = dist_mod.gather_to_rank0(self.parts.local_state_dict(), self.rank, self.world)
            if gathered is not None:
                s["ranks"] = {str(r): g for r, g in enumerate(gathered) if r != 0}
        return s

    def fingerprint(self) -> str:
        """A hash of the settings that decide what is trained: a checkpoint from other settings is refused."""
        return fingerprint(self.cfg)

    def load_state(self, s: dict[str, Any]) -> None:
        """Continue from a :meth:`state` (this rank's part of it); a CheckpointError if it does not fit this
        run, a ConfigError if it was written by another number of processes."""
        try:
            check_fits(s, self.fingerprint(), self.world, legacy_fingerprints(self.cfg, s))
            self.parts.load_state_dict(s, self.rank)
            self.step = self._saved_step = int(s["step"])
        except (checkpoint.CheckpointError, ConfigError):
            raise
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as e:
            hint = unrecorded_choice_hint(self.cfg, self.dataset.choices)
            raise checkpoint.CheckpointError(
                f"it does not fit this run ({first_line(e, 200)}){hint}"
            ) from None

    def save_checkpoint(self) -> Path:
        """Write a checkpoint of this step (rank 0 writes; the other ranks wait for the write's outcome); a step
        whose loss was not finite is refused first (``on_nonfinite=error``), so no checkpoint holds it."""
        self._read_stats(reset=False)
        state = self.state()

        def save() -> Path:
            return checkpoint.save(self.ckpt_dir, self.step, state, keep=self.cfg["keep_checkpoints"])

        path = save() if self.world == 1 else dist_mod.run_on_rank0(save, self.rank)
        self._saved_step = self.step
        self._t_mark = time.perf_counter()  # writing it is not training time
        return path

    # -- the step -------------------------------------------------------------------------------------
    def train_step(self) -> torch.Tensor:
        """One optimizer step; returns the batch's per-sample losses. Nothing here reads device data on the host
        (docs/design.md, "The device contract"): the loss is counted on the device (:attr:`stats`), and the
        gradients of a step whose loss is not finite are zeroed there (:func:`.step.zero_nonfinite_grads`); the
        run learns of it at the next log point (:meth:`_read_stats`)."""
        x0, y = self.batcher.next_labelled()
        draw = self.sampler.sample(x0.shape[0], device=self.device, generator=self.t_gen)
        noise = self.noise.draw(x0, generator=self.noise_gen)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        y = None if self.label_dropout is None else self.label_dropout(y)  # dropped: the null class
        self.optimizer.zero_grad(set_to_none=True)
        if self.accumulate == 1:
            per_sample = self.loss.error(self.net, x0, noise, draw.t, autocast=autocast, labels=y)
            loss = self.loss.objective(draw.t, per_sample, draw.weight)
            loss.backward()
        else:
            per_sample, loss = self._accumulated(x0, noise, draw, y, autocast)
        if self._weighting_params and self.world > 1:
            dist_mod.average_grads(self._weighting_params, self.world)  # DDP averages the model's alone
        self.stats.add(loss, self.step + 1)
        step_mod.zero_nonfinite_grads(self._grad_params)
        if self.cfg["optim"]["grad_clip"] > 0:
            nn.utils.clip_grad_norm_(self._model_params, self.cfg["optim"]["grad_clip"])
        self.optimizer.step()
        self.lr_schedule.step()
        if self.momentum is not None:
            self.momentum.step()
        self.averager.update(self.step)
        self.sampler.observe(draw.t, per_sample.detach())
        self.step += 1
        for hook in self.hooks:
            hook.on_step(self, draw.t, per_sample.detach())
        return per_sample

    def _accumulated(self, x0, noise, draw, y, autocast) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's backward passes in :attr:`accumulate` equal micro-batches of the rank's batch (drawn whole:
        data, noise levels and noise are those of the unaccumulated step), each loss scaled by 1/N so the summed
        gradients are the whole batch's; DDP averages over the ranks at the last micro-batch only. Returns the
        per-sample losses and the batch's loss (detached: for the statistics)."""
        n = self.accumulate
        parts, total = [], torch.zeros((), device=x0.device)
        for i, sl in enumerate(torch.arange(x0.shape[0], device="cpu").chunk(n)):
            sl = slice(int(sl[0]), int(sl[-1]) + 1)
            yi = None if y is None else y[sl]
            sync = i == n - 1 or self.world == 1
            with contextlib.nullcontext() if sync else self.net.no_sync():
                ps = self.loss.error(self.net, x0[sl], noise[sl], draw.t[sl], autocast=autocast, labels=yi)
                loss = self.loss.objective(draw.t[sl], ps, draw.weight[sl]) / n
                loss.backward()
            parts.append(ps)
            total = total + loss.detach()
        return torch.cat(parts), total

    @property
    def skipped(self) -> int:
        """How many of this rank's steps so far had a non-finite loss (their gradients zeroed; a host read)."""
        return self.stats.state_dict()["skipped"]

    def _read_stats(self, reset: bool = True) -> dict[str, Any]:
        """The loss statistics since the last read, over every rank (a host read, and a collective with several
        processes: called at log points, evaluations and checkpoints, on every rank alike). A non-finite loss
        seen since stops the run with a TrainingError naming its step (``on_nonfinite=error``, before anything
        of it is evaluated or saved), or is reported once (``on_nonfinite=skip``)."""
        read = self.stats.read(self.world, reset=reset)
        self._sync_time()
        bad = read["first_bad_step"]
        if bad is not None:
            if self.cfg["on_nonfinite"] != "skip":
                became = (
                    "was not finite"
                    if read["first_bad_value"] is None
                    else f"became {read['first_bad_value']}"
                )
                raise TrainingError(
                    f"the loss {became} at step {bad}; its gradients were zeroed and the "
                    f"last good checkpoint is kept in {str(self.ckpt_dir)!r}. Lower lr, check the data, or set "
                    "on_nonfinite=skip"
                )
            self.say(f"warning: the loss was not finite at step {bad}; that step's gradients were zeroed")
            self.stats.forget_bad()
        return read

    def _sync_time(self) -> None:
        """Count the training time up to now (the device has finished the steps: this follows a host read)."""
        now = time.perf_counter()
        self.train_time += now - self._t_mark
        self._t_mark = now

    # -- logging --------------------------------------------------------------------------------------
    def _log(self, rec: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        for hook in self.hooks:
            hook.on_record(self, rec)

    def _training_record(self) -> dict[str, Any]:
        """The log record of the steps since the last one (reads the loss statistics: the log point's sync)."""
        read = self._read_stats()
        now = time.perf_counter()
        rec = {
            "step": self.step,
            "loss": read["loss_sum"] / read["loss_count"] if read["loss_count"] else None,
            "lr": self.optimizer.param_groups[0]["lr"],
            "steps_per_s": (self.step - self._s_log) / max(now - self._t_log, 1e-9),
            "skipped": read["skipped"],
        }
        self._t_log, self._s_log = now, self.step
        status = self.sampler.status()
        if status:
            rec["sampler"] = status
        return rec

    # -- the loop -------------------------------------------------------------------------------------
    def advance(self) -> None:
        """One iteration of :meth:`run`: a training step, then the logging, evaluation and checkpoint cadence.
        ``train_time`` counts the training steps only (measured between the sync points: log records,
        evaluations, checkpoints), so steps/s is not diluted by evaluations."""
        cfg = self.cfg
        self.train_step()
        for hook in self.hooks:
            hook.on_iteration(self)
        if self.step % cfg["log_every"] == 0:
            self._log(self._training_record())
        if cfg["eval_every"] and self.step % cfg["eval_every"] == 0:
            self._evaluate_now()
        if cfg["checkpoint_every"] and self.step % cfg["checkpoint_every"] == 0:
            self.save_checkpoint()

    def _evaluate_now(self) -> None:
        """Evaluate the step reached, once its losses are known to be finite; the time it takes is not training
        time."""
        self._read_stats(reset=False)
        self.model.eval()
        self.evaluate()
        self.model.train()
        self._t_mark = time.perf_counter()
        if self._bar is not None:
            self._bar.skip_pause()

    def run(self) -> dict[str, Any]:
        """Train to ``steps``, evaluate, checkpoint and write ``summary.json``; return the summary. Ends by
        destroying the process group if this trainer created it."""
        try:
            return self._run()
        finally:
            self.close()

    def _start_run_hooks(self) -> None:
        """The hooks that live for one :meth:`run`: the trackers ``logger`` asks for (rank 0) and the progress bar."""
        cfg = self.cfg
        if self.rank == 0:
            self._run_hooks.extend(hooks.loggers(cfg, self.out, self.run_id))
        self._bar = hooks.ProgressBar(cfg["steps"], self.step, cfg["progress"] and self.rank == 0)
        self._run_hooks.append(self._bar)
        self.hooks.extend(self._run_hooks)

    def _end_run_hooks(self) -> None:
        for hook in self._run_hooks:
            hook.close()
            self.hooks.remove(hook)
        self._run_hooks = []

    def _loop(self) -> None:
        """Advance to ``steps``; on Ctrl-C or SIGTERM save a checkpoint of the step reached (see
        :class:`~.hooks.InterruptGuard`), say so once and raise :class:`~..errors.Interrupted`. With several
        processes the ranks agree on the step to stop after (:class:`~.step.StopAgreement`, every
        :data:`~.step.STOP_EVERY` steps), so they save one checkpoint together."""
        self._stop = step_mod.StopAgreement(self.device, self.world)
        self.interrupts.first_message = (
            "stopping after this step; press Ctrl-C again to stop at once, without saving"
        )
        try:
            while self.step < self.cfg["steps"]:
                self.advance()
                if self._stop.should_stop(self.step, self.interrupts.presses > 0):
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            self._bar.close()
            raise Interrupted(self._on_interrupt()) from None

    def _on_interrupt(self) -> str:
        """Save the step reached (unless it is saved, or stopped mid-step) and say what was kept, once."""
        why = self.interrupts.reason()
        if self.interrupts.presses > 1:  # stopped mid-step: this state is not a consistent one to save
            msg = f"interrupted twice{why}, mid-step; nothing saved; {self._resume_hint()}"
        elif self.step == 0:
            msg = f"interrupted{why} before the first step; nothing to save"
        elif self._saved_step != self.step:
            msg = f"interrupted at step {self.step}{why}; saved {self.save_checkpoint()}; continue with --resume"
        else:  # the checkpoint of this very step is already on disk: do not rewrite it
            path = checkpoint.step_dir(self.ckpt_dir, self.step)
            msg = f"interrupted at step {self.step}{why}; {path} is saved; continue with --resume"
        self.say(msg)
        return msg

    def _resume_hint(self) -> str:
        """Where a resume would continue from, or that there is nothing to continue from."""
        kept = checkpoint.list_checkpoints(self.ckpt_dir) if self.ckpt_dir.is_dir() else []
        if not kept:
            return "no checkpoint was written yet, so a rerun starts from step 0"
        return f"--resume continues from {kept[0]}"

    def _final(self) -> None:
        """Save the last step, then evaluate it (if the cadence has not): a signal during the evaluation loses
        nothing. A first Ctrl-C or SIGTERM there lets the evaluation finish (the run then ends as interrupted, its
        summary written); a second stops it at once, and ``--resume`` evaluates the saved step."""
        if self._saved_step != self.step:
            self.save_checkpoint()
        self.interrupts.first_message = (
            f"step {self.step} is saved; finishing its evaluation, then stopping (press Ctrl-C again to stop at "
            "once: --resume evaluates it)"
        )
        if self._eval_step != self.step:
            try:
                self._evaluate_now()
            except KeyboardInterrupt:
                msg = (
                    f"interrupted twice{self.interrupts.reason()} during the final evaluation; step {self.step} "
                    "is saved; continue with --resume to evaluate it"
                )
                self.say(msg)
                raise Interrupted(msg) from None

    def _run(self) -> dict[str, Any]:
        finished = self._finished_summary()
        if finished is not None:
            self.say(
                f"this run finished at step {self.step}: nothing to do, nothing changed (to measure it again: "
                f"diffusion-curriculum evaluate --run {self.out}; to train longer: --resume steps=N)"
            )
            return finished
        self._start_run_hooks()
        self.model.train()
        self._t_log, self._s_log = time.perf_counter(), self.step
        self._t_mark = self._t_log
        try:
            with self.interrupts:  # the training loop, the last save and the final evaluation alike
                self._loop()
                self._bar.close()
                self._final()
                summary = self._finish()
                if self.interrupts.presses:
                    why = self.interrupts.reason()
                    msg = f"interrupted{why} during the final evaluation, which finished: the run is complete"
                    self.say(msg)
                    raise Interrupted(msg)
                return summary
        finally:
            self._end_run_hooks()

    def _finished_summary(self) -> dict[str, Any] | None:
        """The summary of a run that a resume found already finished (its ``summary.json`` is of this very step,
        which is ``steps``), else ``None``. Every rank reads the same file, so every rank decides alike."""
        path = self.out / "summary.json"
        if self.step < self.cfg["steps"] or not path.is_file():
            return None
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return summary if isinstance(summary, dict) and summary.get("steps") == self.step else None

    def _finish(self) -> dict[str, Any]:
        """The run's summary; rank 0 also draws the final samples and writes ``summary.json``."""
        last = self.stats.state_dict()  # this rank's losses since the last log record
        summary = {
            "steps": self.step,
            # the mean since the last log line when steps are not a multiple of log_every (or fewer than it)
            "final_loss": last["loss_sum"] / last["loss_count"] if last["loss_count"] else None,
            "final_eval": self.last_eval,
            "train_time_s": self.train_time,
            "steps_per_s": self.step / max(self.train_time, 1e-9),
            "parameters": self.n_params,
            "skipped_steps": self._read_stats(reset=False)["skipped"],  # over every rank
            "device": str(self.device),
            "processes": self.world,
        }
        if self.rank == 0:
            self.rundir.save_samples(self.generate(None if self.dataset.kind == "points" else GRID), "final")
            if summary["final_loss"] is None:
                summary["final_loss"] = self.rundir.last_loss()
            self.rundir.write_summary(summary)
        return summary


def train(cfg: dict, out_dir: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg`` (a resolved config, see :func:`config.resolve`) into ``out_dir``; return the summary."""
    return Trainer(cfg, out_dir, resume=resume).run()
