"""The run directory's one owner: what a run writes, where, and how it is read back.

A run directory holds ``config.yaml`` (the fully resolved config), ``metrics.jsonl`` (one JSON object per line,
each with ``step``), ``samples/*.png``, ``checkpoints/step_*`` (resumable, see :mod:`checkpoint`) and
``summary.json``. Every file but the appended ``metrics.jsonl`` is written atomically, so a crash never leaves
half a file. Besides :class:`RunDir` (the trainer's writer) the module reads runs back for the commands that
use them: :func:`load_config`, :func:`load_ema_weights` and :func:`load_newest_ema`.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import checkpoint, config, data
from ..checks import atomic_write, first_line
from ..errors import ConfigError
from .state import unrecorded_choice_hint

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
SAMPLES = "samples"


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a ``metrics.jsonl``; a torn or foreign line is skipped."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            out.append(rec)
    return out


class RunDir:
    """The files of one run directory ``root`` (nothing is created until :meth:`prepare`)."""

    #: where a resume reads the weights and optimizer state to (the trainer's device; None: the CPU)
    load_device: Any = None

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.config_path = self.root / CONFIG
        self.metrics_path = self.root / METRICS
        self.summary_path = self.root / SUMMARY
        self.ckpt_dir = self.root / CHECKPOINTS
        self.samples_dir = self.root / SAMPLES

    # -- set-up --------------------------------------------------------------------------------------------
    def holds_run(self) -> bool:
        """Whether a run was already trained here (a checkpoint or a metrics log)."""
        return bool(self.checkpoints()) or self.metrics_path.exists()

    def prepare(self, resume: bool) -> None:
        """Refuse a directory that holds a run unless ``resume``, and a path that is (or lies under) a file (each a
        ConfigError), then create the folders."""
        blocking = next((p for p in (self.root, *self.root.parents) if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            what = "is a file" if blocking == self.root else f"lies under {str(blocking)!r}, which is a file"
            raise ConfigError(
                f"the run directory {str(self.root)!r} {what}, not a directory; choose another --out"
            )
        if not resume and self.holds_run():
            raise ConfigError(
                f"run directory {str(self.root)!r} already holds a run; pass --resume to continue it, "
                "or choose another --out"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self.samples_dir.mkdir(exist_ok=True)

    def run_id(self, fresh: bool) -> str:
        """The run's tracker id (W&B), kept in ``run_id`` in the directory: a new random one for a run that
        starts here (``fresh``), the kept one for a resume. A run written before ids were kept resumes under the
        id it was logged with then (the hash of its absolute path)."""
        path = self.root / "run_id"
        if not fresh and path.is_file():
            return path.read_text().strip()
        if fresh:
            rid = secrets.token_hex(8)
        else:
            rid = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:16]
        atomic_write(path, rid + "\n")
        return rid

    def start(
        self, resume: bool, load_state: Callable[[dict], None], say: Callable[[str], None]
    ) -> tuple[Path, int] | None:
        """Prepare the directory for a run (see :meth:`prepare`). On ``resume``: tidy what an interrupted
        checkpoint write left, then give the newest usable checkpoint's state to ``load_state`` (one that
        raises ``CheckpointError`` is passed over with a warning) and return its (path, step); ``None`` when
        there is no checkpoint (a fresh start). A CheckpointError when none of them is usable."""
        if resume:
            for p in checkpoint.remove_leftovers(self.ckpt_dir):
                say(f"tidied {p.name}, left behind by an interrupted checkpoint write")
        self.prepare(resume)
        if resume:
            return self._resume(self.checkpoints(), load_state, say)
        self.reset_metrics()
        return None

    def _resume(
        self, existing: list[Path], load_state: Callable[[dict], None], say: Callable[[str], None]
    ) -> tuple[Path, int] | None:
        errors = []
        for path in existing:
            try:
                step, state = checkpoint.load(path, self.load_device)
                load_state(state)
            except checkpoint.CheckpointError as e:
                errors.append(f"{path.name}: {e}")
                say(f"warning: {path.name} is unusable ({e}); trying the previous checkpoint")
                continue
            note = "" if path == existing[0] else ", the newest usable checkpoint"
            say(f"resumed from {path.name}{note}")
            return path, step
        if existing:
            raise checkpoint.CheckpointError(
                f"no usable checkpoint in {str(self.ckpt_dir)!r} (newest: {errors[0]}); "
                "move them away to start over"
            )
        say(f"no checkpoint in {str(self.ckpt_dir)!r}; starting from step 0")
        self.reset_metrics()
        return None

    def write_config(self, cfg: dict) -> None:
        """Write the resolved config as ``config.yaml``."""
        atomic_write(self.config_path, config.dump(cfg))

    # -- metrics.jsonl -------------------------------------------------------------------------------------
    def append(self, rec: dict[str, Any]) -> None:
        """Append one record to ``metrics.jsonl``."""
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def read_metrics(self) -> list[dict]:
        """The records of ``metrics.jsonl`` (see :func:`read_metrics`)."""
        return read_metrics(self.metrics_path)

    def reset_metrics(self) -> None:
        """Remove ``metrics.jsonl`` (a run that starts from step 0)."""
        self.metrics_path.unlink(missing_ok=True)

    def truncate_metrics(self, step: int) -> None:
        """Keep only whole lines logged at or before ``step`` (drops a torn last line too): what a run resumed
        from the checkpoint of ``step`` continues."""
        kept = [r for r in self.read_metrics() if r["step"] <= step]
        atomic_write(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def last_loss(self) -> float | None:
        """The last training loss logged, or ``None``."""
        losses = [r["loss"] for r in self.read_metrics() if r.get("loss") is not None]
        return losses[-1] if losses else None

    # -- samples, summary, checkpoints ---------------------------------------------------------------------
    def save_samples(self, x: torch.Tensor, name: str) -> Path:
        """Save a grid (images) or scatter plot (points) of ``x`` as ``samples/<name>.png``."""
        path = self.samples_dir / f"{name}.png"
        data.save_grid(x, path)
        return path

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write ``summary.json``."""
        atomic_write(self.summary_path, json.dumps(summary, indent=2))

    def checkpoints(self) -> list[Path]:
        """The checkpoint directories, newest first."""
        return checkpoint.list_checkpoints(self.ckpt_dir)


# -- reading runs back --------------------------------------------------------------------------------------
def load_config(run: str | os.PathLike) -> dict:
    """A run directory's ``config.yaml`` over the defaults, validated (a ConfigError if it is missing or
    invalid). A run saved before ``eval.seeding`` existed keeps the noise it was evaluated with
    (:data:`LEGACY_EVAL`), so its later evaluations, resumed or offline, compare with its earlier ones."""
    path = Path(run) / CONFIG
    saved = config.load_yaml(path)
    if isinstance(saved, dict) and isinstance(saved.get("eval"), dict):
        saved["eval"] = {**LEGACY_EVAL, **saved["eval"]}
    return config.validate(config.merge(config.DEFAULTS, saved))


def with_legacy_eval(cfg: dict, run: str | os.PathLike) -> dict:
    """``cfg`` (not changed), to resume the run in ``run`` with: the :data:`LEGACY_EVAL` settings its saved
    config.yaml lacks replace ``cfg``'s (as :func:`load_config` reads them), for a caller that resolves the
    configuration afresh instead of reading the run's own."""
    path = Path(run) / CONFIG
    saved = config.load_yaml(path) if path.is_file() else None
    if not (isinstance(saved, dict) and isinstance(saved.get("eval"), dict)):
        return cfg
    lacking = {k: v for k, v in LEGACY_EVAL.items() if k not in saved["eval"]}
    return {**cfg, "eval": {**cfg["eval"], **lacking}} if lacking else cfg


#: what a saved config.yaml's ``eval`` section meant by a key it lacks, where the default has changed since:
#: evaluation noise was one CPU stream (``seeding: stream``) before it could be split over processes
LEGACY_EVAL = {"seeding": "stream"}


def load_ema_weights(model: nn.Module, ckpt: str | os.PathLike) -> int:
    """Load a checkpoint's EMA weights into ``model``; return its step. Raises ``CheckpointError`` when the
    checkpoint is unreadable or does not fit the model."""
    step, state = checkpoint.load(ckpt)
    try:
        model.load_state_dict(state["ema"])
    except (RuntimeError, KeyError) as e:
        raise checkpoint.CheckpointError(
            f"checkpoint {str(ckpt)!r} does not fit its run ({first_line(e, 200)}){_fit_hint(Path(ckpt))}"
        ) from None
    return step


def _fit_hint(ckpt: Path) -> str:
    """:func:`~.state.unrecorded_choice_hint` for the run holding ``ckpt`` (``<run>/checkpoints/step_*``)."""
    path = ckpt.parent.parent / CONFIG
    try:
        return unrecorded_choice_hint(config.load_yaml(path) or {}) if path.is_file() else ""
    except ConfigError:
        return ""


def load_newest_ema(
    model: nn.Module, ckpts: list[Path], where: str | os.PathLike, warn: Callable[[str], None] | None = None
) -> tuple[Path, int]:
    """Load the EMA weights of the newest usable checkpoint of ``ckpts`` (newest first) into ``model``; return
    (its path, its step). Each unusable one is passed over (with ``warn(message)`` when given); none usable
    raises ``CheckpointError`` naming ``where``."""
    newest = None
    for ck in ckpts:
        try:
            return ck, load_ema_weights(model, ck)
        except checkpoint.CheckpointError as e:
            newest = newest or first_line(e, 1000)
            if warn is not None:
                warn(f"warning: {first_line(e)}; trying the previous checkpoint")
    why = f" (the newest: {newest})" if newest else ""
    raise checkpoint.CheckpointError(f"no usable checkpoint under {str(where)!r}{why}")
