"""``gaussian``: independent standard normal noise, ε ~ N(0, I) for every sample (Ho et al. 2020, eq. 4): the
default, and exactly the trainer's draw before noise assignment existed."""

from __future__ import annotations

from .base import NoiseAssigner, register


@register
class Gaussian(NoiseAssigner):
    """ε ~ N(0, I), one ``torch.randn`` of x0's shape from the generator."""

    name = "gaussian"

    def _draw(self, x0, generator):
        return self._randn(x0.shape, x0, generator)
