"""``assignment``: a batch's noises assigned to its samples by a linear assignment that minimises the total
squared distance (Immiscible Diffusion, Li et al. 2024, arXiv 2406.12303, Algorithm 1: draw a batch of noise,
solve min_π Σ_i ‖x0_i − ε_π(i)‖² over permutations π with ``scipy.optimize.linear_sum_assignment``, train on the
permuted noise).

The batch's noise as a whole is still B independent N(0, I) draws (only their pairing with the samples changes),
so its norm distribution is unchanged; each sample's noise is no longer independent of it. The cost matrix is
built on the device; the assignment is solved on the CPU (a host read of B² numbers per step: this strategy
is not free of host syncs, unlike ``knn``). The paper computes the cost in half precision to save time; here it
is float32 (the batch sizes this library trains at make it cheap).
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

from .base import NoiseAssigner, register


@register
class Assignment(NoiseAssigner):
    """Noise permuted within the batch by the minimum-total-distance assignment to the samples."""

    name = "assignment"
    host_sync = True

    def _draw(self, x0, generator):
        eps = self._randn(x0.shape, x0, generator)
        xf, ef = x0.flatten(1).float(), eps.flatten(1).float()
        # ‖x_i − ε_j‖² up to the row term ‖x_i‖², which does not change the assignment
        cost = ef.pow(2).sum(1)[None, :] - 2 * xf @ ef.T
        _, cols = linear_sum_assignment(cost.cpu().double().numpy())
        return eps[torch.as_tensor(cols, device=x0.device)]
