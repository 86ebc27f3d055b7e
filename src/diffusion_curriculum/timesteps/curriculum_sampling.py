"""The ``curriculum-sampling`` strategy: middle noise levels first (logit-normal), then uniform ("Curriculum
Sampling" for flow matching, arXiv 2603.12517, 2026)."""

from __future__ import annotations

from typing import Any

import torch

from .base import TimestepSampler, check_param, is_number, register


@register
class CurriculumSampling(TimestepSampler):
    """u = sigmoid(N(mean, std²)) (SD3's logit-normal, Esser et al. 2024, eq. 19) for the first ``switch`` of the
    planned steps, then u ~ U(0, 1) (arXiv 2603.12517, §3: a static middle-biased density converges faster early
    but ends worse; switching to uniform keeps the early gain and the uniform end point). The switch point's
    default, half of the budget, is the project's choice [reconstruction: the paper's switch is given in steps of
    its CIFAR-10 schedule, not as a rule].

    On a flow process t = u (clamped, then shifted by the process); on a discrete one t = ⌊u·T⌋ (the first phase
    is then ``logit-normal``'s discrete draw, the second exactly ``torch.randint(0, T)``'s). The phase follows the
    sampler's step (one ``observe`` per optimizer step), so it resumes exactly. Needs ``total_steps``."""

    name = "curriculum-sampling"
    supports = ("discrete", "flow")

    def __init__(self, process, total_steps=None, switch: float = 0.5, mean: float = 0.0, std: float = 1.0):
        super().__init__(process, total_steps)
        check_param(
            "switch", switch, is_number(switch) and 0 <= switch <= 1, "a fraction of the steps in [0, 1]"
        )
        check_param("mean", mean, is_number(mean), "a finite number")
        check_param("std", std, is_number(std) and std > 0, "a number > 0")
        check_param(
            "total_steps",
            total_steps,
            total_steps is not None,
            "the planned number of steps (the switch is a fraction of it)",
        )
        self.switch, self.mean, self.std = float(switch), float(mean), float(std)
        #: the step from which the draw is uniform
        self.switch_step = round(self.switch * total_steps)

    def uniform_phase(self) -> bool:
        """Whether the sampler has reached the uniform phase."""
        return self.step >= self.switch_step

    def _draw(self, batch_size, generator):
        p = self.process
        if self.uniform_phase():
            if self.kind == "flow":
                return p.clamp(torch.rand(batch_size, generator=generator)), None
            return torch.randint(0, p.T, (batch_size,), generator=generator), None
        u = torch.sigmoid(self.mean + self.std * torch.randn(batch_size, generator=generator))
        if self.kind == "flow":
            return p.clamp(u), None
        return (u * p.T).long().clamp_(0, p.T - 1), None

    def status(self) -> dict[str, Any]:
        return {"phase": "uniform" if self.uniform_phase() else "logit-normal"}
