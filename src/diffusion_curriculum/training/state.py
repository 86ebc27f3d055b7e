"""The trainer's resumable state: one registry of named parts, each with ``state_dict`` / ``load_state_dict``.

As edm2's ``CheckpointIO``: a new stateful part of training is one :meth:`StateRegistry.register` line; saving,
resuming and the per-rank bookkeeping of a data-parallel run follow from it. A checkpoint's state is::

    {"step", "fingerprint", "world_size", <each part by name, in registration order>, ["ranks": {r: ...}]}

A part's state may differ from rank to rank (random streams, a histogram of this rank's draws): such a part is
registered with ``local`` (the whole part, or some keys of its state). Rank 0's copy sits in the part itself;
every other rank's copy sits under ``ranks/<r>/<name>`` (a whole part) or ``ranks/<r>/<key>`` (some keys).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..checkpoint import CheckpointError
from ..errors import ConfigError

#: keys that may change when a run is resumed (they do not change what is trained)
RESUMABLE_KEYS = (
    "steps",
    "accumulate",
    "eval_every",
    "checkpoint_every",
    "log_every",
    "keep_checkpoints",
    "device",
    "progress",
    "tensorboard",
    "logger",
    "eval",
    "metrics",
    "on_nonfinite",
    "cudnn_benchmark",
)


def fingerprint(cfg: dict) -> str:
    """A hash of the settings that decide what is trained: a checkpoint from other settings is refused."""
    fixed = {k: v for k, v in cfg.items() if k not in RESUMABLE_KEYS}
    if not (fixed.get("cond") or {}).get("enabled", False):  # off, conditioning trains nothing: runs from
        fixed.pop("cond", None)  # before the cond section existed keep their fingerprint and resume
    if fixed.get("noise") == {"name": "gaussian"}:  # the default noise: the same for runs from before the key
        fixed.pop("noise")
    return hashlib.sha256(json.dumps(fixed, sort_keys=True, default=str).encode()).hexdigest()[:16]


#: dataset parameters a loader may choose when the config leaves them unset (``Dataset.choices``: a folder's
#: channel count, detected since grayscale folders are read with one channel). Every run records its choice in
#: its config (:func:`with_choices`), so config.yaml holds it from the first save on; a checkpoint saved before
#: runs did (its fingerprint lacks the key) still fits (:func:`legacy_fingerprints`): the choice changes the
#: model's shapes, so a wrong one cannot pass.
RECORDED_CHOICES = ("channels",)


def with_choices(cfg: dict, dataset: Any) -> dict:
    """``cfg`` (not changed) with the parameters ``dataset``'s loader chose because ``cfg`` left them unset
    written into a copy of its dataset section."""
    section = cfg["dataset"]
    new = {k: v for k, v in dataset.choices.items() if section.get(k) is None}
    return {**cfg, "dataset": {**section, **new}} if new else cfg


def with_recorded_choices(given: dict, saved: dict) -> dict:
    """The dataset section ``given`` (on resuming, from --preset/--config) with the choices the run recorded
    (``saved``) filled in where ``given`` leaves them unset: leaving a choice to the loader asks for it."""
    return {**given, **{k: saved[k] for k in RECORDED_CHOICES if given.get(k) is None and k in saved}}


def unrecorded_choice_hint(cfg: dict, choices: dict | None = None) -> str:
    """What to do when a checkpoint does not fit a folder run that may have been trained as RGB before grayscale
    folders were read with one channel: a sentence, else ``""``. With the loader's ``choices`` (the trainer):
    only when it detected one channel; without (a saved config.yaml): when the config names no channel count."""
    ds = cfg.get("dataset") or {}
    if ds.get("name") != "folder":
        return ""
    if (choices.get("channels") != 1) if choices is not None else (ds.get("channels") is not None):
        return ""
    return (
        "; a folder run started before grayscale folders were read with one channel was trained as RGB: add "
        "'channels: 3' to the dataset section of the run's config.yaml to resume or sample it as it was"
    )


def legacy_fingerprints(cfg: dict, state: dict[str, Any]) -> tuple[str, ...]:
    """The other fingerprints a checkpoint ``state`` of this run may carry: one written before a sampler saved a
    parameter whose default changed (``CHANGED_DEFAULTS`` of its class: CLTS's ``coordinate`` was 't', the
    learning-progress ``progress`` was 'relative') is resumed with the line its refusal asks for (e.g.
    ``coordinate: t``), which changes the sampler section and so the fingerprint; one saved before the dataset
    section recorded its loader's choices (:data:`RECORDED_CHOICES`) lacks them. Every combination of the two."""
    from .. import timesteps

    ds = cfg.get("dataset") or {}
    chosen = [k for k in RECORDED_CHOICES if ds.get(k) is not None]
    datasets = [ds] + ([{k: v for k, v in ds.items() if k not in chosen}] if chosen else [])
    sampler, saved = cfg.get("sampler") or {}, state.get("sampler")
    cls = timesteps.REGISTRY.get(sampler.get("name"))
    old = []
    if cls is not None and isinstance(saved, dict):
        old = [k for k, v in cls.CHANGED_DEFAULTS.items() if sampler.get(k) == v and k not in saved]
    samplers = [sampler] + ([{k: v for k, v in sampler.items() if k not in old}] if old else [])
    return tuple(
        fingerprint({**cfg, "dataset": d, "sampler": sm})
        for i, d in enumerate(datasets)
        for j, sm in enumerate(samplers)
        if i or j
    )


def check_fits(
    state: dict[str, Any], expected_fingerprint: str, world: int, also: tuple[str, ...] = ()
) -> None:
    """Refuse a checkpoint's ``state`` written with other settings (a CheckpointError; ``also``: further
    fingerprints that fit, :func:`legacy_fingerprints`) or by another number of processes (a ConfigError: each
    process's random streams are saved, so only the same number continues them exactly)."""
    if state.get("fingerprint") not in (expected_fingerprint, *also):
        raise CheckpointError(
            "it was written with different settings (model, data, strategy or optimizer) "
            "than this run's config.yaml"
        )
    saved_world = int(state.get("world_size", 1))
    if saved_world != world:
        raise ConfigError(
            f"the checkpoint of step {state['step']} was written by {saved_world} process(es) but this run "
            f"has {world}; resume with {saved_world} (e.g. torchrun --nproc_per_node "
            f"{saved_world} on one node): each process's random streams are saved, so a resume is "
            "exact only with the same number of processes"
        )


@dataclass
class _Part:
    obj: Any
    #: True: the whole state is per rank; a tuple: these keys of it are
    local: bool | tuple[str, ...]


class StateRegistry:
    """Named stateful parts, saved and restored in registration order.

    A part is any object with ``state_dict()`` and ``load_state_dict(state)`` (a module, an optimizer, an LR
    scheduler, a sampler, a batcher, :class:`RandomStreams`, :class:`Attributes`), or ``None`` for a part that
    this run does not have: it is saved as ``None`` and skipped on load.
    """

    def __init__(self) -> None:
        self._parts: dict[str, _Part] = {}

    def register(self, name: str, obj: Any, *, local: bool | tuple[str, ...] = False) -> None:
        """Add part ``name``. ``local``: ``True`` when its whole state is per rank, or the keys of its state
        that are."""
        if name in self._parts:
            raise ValueError(f"state part {name!r} is registered twice")
        self._parts[name] = _Part(obj, local if local is True else tuple(local or ()))

    def state_dict(self) -> dict[str, Any]:
        """Every part's state by name (``None`` for an absent part)."""
        return {n: (p.obj.state_dict() if p.obj is not None else None) for n, p in self._parts.items()}

    def local_state_dict(self) -> dict[str, Any]:
        """This rank's own part of the state (on CPU), as it is stored under ``ranks/<r>``."""
        out: dict[str, Any] = {}
        for name, p in self._parts.items():
            if p.obj is None or not p.local:
                continue
            s = p.obj.state_dict()
            if p.local is True:
                out[name] = _to_cpu(s)
            else:
                out.update({k: _to_cpu(s[k]) for k in p.local})
        return out

    def load_state_dict(self, state: dict[str, Any], rank: int = 0) -> None:
        """Restore every present part from ``state``; on a rank other than 0 the per-rank parts come from
        ``state["ranks"][str(rank)]``. A missing key raises ``KeyError``."""
        mine = state["ranks"][str(rank)] if rank != 0 and self._has_local() else None
        for name, p in self._parts.items():
            if p.obj is None:
                continue
            s = state[name]
            if mine is not None and p.local is True:
                s = mine[name]
            elif (
                mine is not None and p.local
            ):  # a key a rank did not save yet (an older checkpoint): rank 0's
                s = {**s, **{k: mine[k] for k in p.local if k in mine}}
            p.obj.load_state_dict(s)

    def _has_local(self) -> bool:
        return any(p.local and p.obj is not None for p in self._parts.values())


def _to_cpu(x: Any) -> Any:
    return x.cpu() if isinstance(x, torch.Tensor) else x


class RandomStreams:
    """The random streams of one rank as a state part: torch's, NumPy's and Python's global generators, the
    timestep and noise generators, and the CUDA generator of ``device`` when it is a GPU."""

    def __init__(self, t_gen: torch.Generator, noise_gen: torch.Generator, device: torch.device):
        self.t_gen, self.noise_gen, self.device = t_gen, noise_gen, device

    def state_dict(self) -> dict[str, Any]:
        """Every stream's state (tensors, and NumPy's state tuple)."""
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

    def load_state_dict(self, rng: dict[str, Any]) -> None:
        """Continue every stream from a :meth:`state_dict` (as a checkpoint gives it back: NumPy's key array as a
        tensor)."""
        torch.set_rng_state(rng["torch"])
        st = rng["numpy"]
        np.random.set_state((st[0], np.asarray(st[1].numpy(), dtype=np.uint32), *st[2:]))
        random.setstate(rng["python"])
        self.t_gen.set_state(rng["t_gen"])
        self.noise_gen.set_state(rng["noise_gen"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)


class Attributes:
    """Some attributes of an object as a state part: ``Attributes(trainer, "loss_sum", "skipped")``. On load a
    tensor attribute is copied into in place; any other is set, converted to its current type (an int stays
    an int)."""

    def __init__(self, owner: Any, *names: str):
        self.owner, self.names = owner, names

    def state_dict(self) -> dict[str, Any]:
        """The attributes' current values by name."""
        return {n: getattr(self.owner, n) for n in self.names}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Set each attribute from ``state``."""
        for n in self.names:
            current = getattr(self.owner, n)
            if isinstance(current, torch.Tensor):
                current.copy_(state[n])
            else:
                setattr(self.owner, n, type(current)(state[n]))


class Merged:
    """Several state parts saved as one mapping (each part's keys side by side, so they must not clash) and loaded
    back into each: e.g. the trainer's ``log`` part, whose loss sums live on the device
    (:class:`~.step.StepStats`) and whose other keys are attributes."""

    def __init__(self, *parts: Any):
        self.parts = parts

    def state_dict(self) -> dict[str, Any]:
        """Every part's keys."""
        out: dict[str, Any] = {}
        for p in self.parts:
            out.update(p.state_dict())
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Give each part its own keys of ``state``."""
        for p in self.parts:
            p.load_state_dict({k: state[k] for k in p.state_dict()})
