"""Former home of the run plots, kept so ``from diffusion_curriculum import plots`` goes on working: the plots
live in :mod:`diffusion_curriculum.viz`, the reading of ``metrics.jsonl`` in :mod:`diffusion_curriculum.training.rundir`."""

from __future__ import annotations

from .training.rundir import read_metrics
from .viz import figure, save_figure, timestep_plots

__all__ = ["figure", "read_metrics", "save_figure", "timestep_plots"]
