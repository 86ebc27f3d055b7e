"""The trainer's historical home, kept so ``from diffusion_curriculum.train import ...`` goes on working: every
name is re-exported from :mod:`diffusion_curriculum.training`, where the code lives."""

from __future__ import annotations

from .training import (
    GRID,
    RESUMABLE_KEYS,
    T_HIST_BINS,
    Components,
    DistContext,
    LRSchedule,
    Trainer,
    TrainingError,
    build_components,
    dist_timeout,
    resolve_device,
    setup_distributed,
    stream_seed,
    train,
)

__all__ = [
    "GRID",
    "RESUMABLE_KEYS",
    "T_HIST_BINS",
    "Components",
    "DistContext",
    "LRSchedule",
    "Trainer",
    "TrainingError",
    "build_components",
    "dist_timeout",
    "resolve_device",
    "setup_distributed",
    "stream_seed",
    "train",
]
