"""The trainer's historical home, kept so ``from diffusion_curriculum.train import ...`` goes on working: every
public name of :mod:`diffusion_curriculum.training`, where the code lives, is re-exported here."""

from __future__ import annotations

from .training import *  # noqa: F403
from .training import __all__  # noqa: F401
