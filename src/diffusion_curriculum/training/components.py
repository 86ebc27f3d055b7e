"""What a configuration builds: process, data, model, sampler, weighting, optimizer and its schedules — before
anything is written to disk — and the device and per-stream seeds a run uses.

Every builder's error names its config section, so a bad config fails here with one sentence.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import config, data, generate, models, noise, timesteps, weighting
from .. import process as process_mod
from ..checks import first_line
from ..errors import ConfigError
from . import conditioning

#: errors a builder may raise for a parameter it does not check itself (a wrong type, an impossible size); each
#: is turned into one ConfigError sentence naming the section
_BUILD_ERRORS = (TypeError, RuntimeError, ArithmeticError, IndexError, KeyError, AttributeError, MemoryError)


@dataclass
class Components:
    """What a configuration builds, before anything is written to disk."""

    process: Any
    dataset: data.Dataset
    model: nn.Module
    sampler: timesteps.TimestepSampler
    weight_fn: Callable
    #: the bounds generation clips x̂0 to, or None (:func:`clip_range` of the config's ``eval.clip``)
    clip: tuple[float, float] | None = None
    #: the classes a class-conditional model is built for (``cond.enabled``), or None: unconditional
    num_classes: int | None = None
    #: which noise each sample is paired with (the ``noise`` section; :mod:`diffusion_curriculum.noise`)
    noise: Any = None


def _named(cfg: dict, section: str) -> tuple[str, dict]:
    sec = dict(cfg[section])
    return sec.pop("name"), sec


def _build(section: str, params: dict, fn: Callable, *args, **kwargs):
    """Call one builder. Its own ``ValueError`` names the key and passes through (a message that starts with a
    bare parameter name, "T must be ...", gets the section in front: "process.T must be ..."); any other error on a
    parameter it does not check (a wrong type, an impossible size) becomes a ConfigError naming the section."""
    try:
        return fn(*args, **kwargs)
    except ValueError as e:
        text = str(e)
        if any(text.startswith((f"{k} ", f"{k}=")) for k in params if k != "name"):
            raise ConfigError(f"{section}.{text}") from None
        raise
    except _BUILD_ERRORS as e:
        raise ConfigError(f"{section} settings {params!r} cannot be used: {first_line(e, 200)}") from None


def build_components(cfg: dict) -> Components:
    """Build process, data, model, sampler and weighting from a validated config; every error names its key."""
    pname, pparams = _named(cfg, "process")
    proc = _build("process", cfg["process"], process_mod.build, pname, **pparams)
    try:  # the evaluation's generation method must fit the process, before anything trains
        method = generate.method_for(proc, cfg["eval"]["method"], key="eval.method")
    except ValueError as e:
        raise ConfigError(f"{e} (process.name={pname})") from None
    steps = cfg["eval"]["steps"]
    if method == "ddpm" and steps not in (config.DEFAULTS["eval"]["steps"], proc.T):
        raise ConfigError(
            f"eval.steps={steps} does not apply to eval.method=ddpm, which always takes all T={proc.T} steps; "
            "remove eval.steps, or use eval.method=ddim"
        )
    dname, dparams = _named(cfg, "dataset")
    dparams.setdefault("seed", cfg["seed"])
    dataset = _build("dataset", cfg["dataset"], data.load, dname, **dparams)
    k = conditioning.num_classes_for(cfg, dataset)
    mname, mparams = _named(cfg, "model")
    mparams.update({} if k is None else {"num_classes": k})
    model = _build("model", cfg["model"], models.build, mname, dataset.shape, **mparams)
    sname, sparams = _named(cfg, "sampler")
    if "total_steps" in sparams:
        raise ConfigError(
            f"sampler.total_steps={sparams['total_steps']!r} cannot be set here: the trainer plans the sampler "
            f"over the run's steps ({cfg['steps']}); drop it, or set steps"
        )
    sparams["total_steps"] = cfg["steps"]
    sampler = _build("sampler", cfg["sampler"], timesteps.build, sname, proc, **sparams)
    wname, wparams = _named(cfg, "weighting")
    weight_fn = _build(
        "weighting", cfg["weighting"], weighting.build, wname, proc, cfg["prediction"], **wparams
    )
    nname, nparams = _named(cfg, "noise")
    assigner = _build("noise", cfg["noise"], noise.build, nname, **nparams)
    clip = clip_range(cfg["eval"]["clip"], dataset)
    return Components(proc, dataset, model, sampler, weight_fn, clip, k, assigner)


def clip_range(setting: Any, dataset: data.Dataset) -> tuple[float, float] | None:
    """The bounds the trainer's evaluation, ``sample`` and ``evaluate`` clip each x̂0 to while generating: the one
    place that decides it. ``eval.clip: auto`` takes the data's own range (:attr:`data.Dataset.value_range`:
    [-1, 1] for images, none for 2-D points or an ``.npz`` of unscaled points), ``false`` clips nothing and
    ``[low, high]`` clips there."""
    if setting == "auto":
        return dataset.value_range
    if setting is False or setting is None:
        return None
    return float(setting[0]), float(setting[1])


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
        """The LRs of the current step (chainable: the groups' LRs times f(s)/f(s−1))."""
        e = self.last_epoch
        prev = self.factor(e - 1) if e > 0 else 0.0
        if prev == 0.0:
            return [base * self.factor(e) for base in self.base_lrs]
        ratio = self.factor(e) / prev
        return [g["lr"] * ratio for g in self.optimizer.param_groups]


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether the step runs under bfloat16 autocast: ``auto`` on a GPU that computes in bfloat16 natively
    (Ampere and newer), ``bf16`` where asked (a ConfigError on a GPU without it); fp32 everywhere else. (fp16
    with a gradient scaler is not offered: on a GPU without bfloat16, train in fp32.)"""
    native = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    if precision == "bf16" and device.type == "cuda" and not native:
        raise ConfigError(
            f"precision=bf16 needs a GPU that computes in bfloat16 natively, which {torch.cuda.get_device_name(device)} "
            "does not; use precision=fp32 (or auto)"
        )
    return precision == "bf16" or (precision == "auto" and native)


def build_optimizer(
    cfg: dict, model: nn.Module, device: torch.device, extra: list[nn.Parameter] = ()
) -> torch.optim.AdamW:
    """AdamW over ``model``'s parameters with the config's ``lr`` and ``optim`` settings (the fused kernel on a
    GPU: one launch for every parameter). ``extra`` (a learned weighting's parameters) get a second parameter group:
    the same learning rate and betas, no weight decay."""
    oc = cfg["optim"]
    params = model.parameters()
    if extra:
        params = [{"params": list(model.parameters())}, {"params": list(extra), "weight_decay": 0.0}]
    return torch.optim.AdamW(
        params,
        lr=cfg["lr"],
        betas=(oc["beta1"], oc["beta2"]),
        eps=oc["eps"],
        weight_decay=oc["weight_decay"],
        fused=device.type == "cuda" or None,
    )


def learned_weighting(weight_fn, device: torch.device) -> list[nn.Parameter]:
    """A learned weighting's parameters (``edm2-uncertainty``), moved to ``device`` to train with the model; an
    empty list for a fixed weighting."""
    params = list(weight_fn.parameters()) if isinstance(weight_fn, nn.Module) else []
    if params:
        weight_fn.to(device)
    return params


def build_lr_schedule(cfg: dict, optimizer: torch.optim.Optimizer) -> LRSchedule:
    """The config's LR schedule (``optim.warmup_steps``, ``optim.schedule``) over ``steps``."""
    oc = cfg["optim"]
    return LRSchedule(optimizer, oc["warmup_steps"], cfg["steps"], oc["schedule"])


def build_momentum(cfg: dict, optimizer: torch.optim.Optimizer):
    """The config's momentum schedule (MDLRC, :func:`optim.build_momentum`) on ``optimizer``, or ``None`` when
    ``momentum.enabled`` is false."""
    params = dict(cfg["momentum"])
    if not params.pop("enabled", False):
        return None
    from .. import optim

    params.setdefault("total_steps", cfg["steps"])
    return optim.build_momentum(optimizer, **params)


def sampler_floor(cfg: dict, sampler, dataset: data.Dataset, process) -> list[float]:
    """The training data's optimal loss per bucket of a sampler that draws by it (``needs_floor``: the
    ``optimal-gap`` sampler), on the validation entries' settings. A class-conditional run trains a share
    ``cond.drop_prob`` of its samples without their label, so its floor is that mix of the unconditional and the
    conditional optimum. A ConfigError in one sentence for noise that depends on the data (the optimum assumes
    independent Gaussian noise) or data too large for the exact floor (naming the alternative)."""
    from .. import optimal_loss

    if cfg["noise"]["name"] != "gaussian":
        raise ConfigError(
            f"sampler {sampler.name!r} needs noise.name=gaussian: its optimal loss assumes noise independent of the "
            f"data, and noise.name={cfg['noise']['name']} pairs them; use gaussian noise with it, or another sampler"
        )

    def floor(labels) -> list[float]:
        return optimal_loss.per_bucket_floor(
            process,
            cfg["prediction"],
            dataset.data,
            sampler.K,
            per_bucket=cfg["eval"]["val_per_bucket"] or 32,
            seed=cfg["eval"]["seed"],
            labels=labels,
        )

    try:
        if not cfg["cond"]["enabled"]:
            return floor(None)
        p = float(cfg["cond"]["drop_prob"])
        cond = floor(dataset.labels)
        if p == 0:
            return cond
        return [(1 - p) * c + p * u for c, u in zip(cond, floor(None))]
    except optimal_loss.OptimalLossError as e:
        raise ConfigError(
            f"sampler {sampler.name!r} needs the exact optimal loss of the training data, and {e}; or use the "
            "learning-progress sampler, which needs no optimal loss"
        ) from None
