"""Which noise each clean sample is paired with: one module per strategy, one registry (as :mod:`..timesteps`).

``noise.build(name, **params)`` builds an assigner; ``assigner.draw(x0, generator=g)`` returns noise shaped like
``x0`` on ``x0``'s device, and replaces ``torch.randn_like(x0)`` in a training loop. Every strategy is an
orthogonal choice to the noise-level sampler: it changes which Gaussian draw a sample is noised with, never the
level. The trainer's ``noise`` config key picks one (default ``gaussian``: the plain independent draw, bit for
bit what the trainer drew before the key existed). Each strategy's file is named as its registry name.
"""

import importlib
import pkgutil

from .base import REGISTRY, NoiseAssigner, build, register

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["REGISTRY", "NoiseAssigner", "build", "names", "register"]


def names() -> list[str]:
    """The registered noise-assignment names."""
    return sorted(REGISTRY)
