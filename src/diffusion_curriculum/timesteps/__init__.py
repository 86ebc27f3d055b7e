"""Which noise levels to train on: one module per strategy, one registry.

``timesteps.build(name, process, **params)`` builds a sampler by its registry name; see
:mod:`diffusion_curriculum.timesteps.base` for the interface. Each strategy's file is named as its registry name
(``-`` written ``_``: ``loss-second-moment`` lives in ``loss_second_moment.py``). Every module in this package is
imported here, so a new strategy is one file whose class carries ``@register`` — nothing else to edit.
"""

import importlib
import pkgutil

from .base import REGISTRY, Draw, TimestepSampler, build, parameters, register

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["REGISTRY", "Draw", "TimestepSampler", "build", "parameters", "register", "names"]


def names() -> list[str]:
    """The registered sampler names."""
    return sorted(REGISTRY)
