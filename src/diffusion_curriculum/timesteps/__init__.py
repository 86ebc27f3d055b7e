"""Which noise levels to train on: one module per strategy, one registry.

``timesteps.build(name, process, **params)`` builds a sampler by its registry name; see
:mod:`diffusion_curriculum.timesteps.base` for the interface.
"""

from . import densities, uniform  # noqa: F401  (registration side effects)
from .base import REGISTRY, Draw, TimestepSampler, build, parameters, register

__all__ = ["REGISTRY", "Draw", "TimestepSampler", "build", "parameters", "register", "names"]


def names() -> list[str]:
    """The registered sampler names."""
    return sorted(REGISTRY)
