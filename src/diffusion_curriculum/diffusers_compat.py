"""Drop-in replacements for the two timestep functions of diffusers' SD3 / Flux training scripts.

diffusers' ``training_utils`` has ``compute_density_for_timestep_sampling(weighting_scheme, batch_size,
logit_mean, logit_std, mode_scale, device, generator)`` and ``compute_loss_weighting_for_sd3(weighting_scheme,
sigmas)``, and the SD3 / Flux / video training scripts that copy them call them like this: draw u ∈ [0, 1) per
sample, take ``indices = (u * num_train_timesteps).long()`` into the scheduler's (shifted) sigmas, and weight the
squared error by the second function's output. The functions here have the same signatures and, for diffusers'
own schemes, return the same values:

* ``logit_normal``: u = sigmoid(n), n ~ N(logit_mean, logit_std²) (Esser et al. 2024, "Scaling Rectified Flow
  Transformers", eq. 19), drawn as ``torch.normal(mean, std, size=(B,), device, generator)``;
* ``mode``: u = 1 − v − s·(cos²(πv/2) − 1 + v), v ~ U(0, 1) (Esser et al. 2024, eq. 20, mode sampling with
  heavy tails, s = ``mode_scale``);
* any other scheme of diffusers (``none``, ``sigma_sqrt``, ``cosmap``): u ~ U(0, 1);
* weights: ``sigma_sqrt`` σ⁻², ``cosmap`` 2/(π(1 − 2σ + 2σ²)) (Esser et al. 2024, §3.1), otherwise 1.

Every noise-level strategy of this library is accepted by its registry name as well (``weighting_scheme=
"loss-second-moment"``, ``"ddc"``, ``"clts"``, ...): u is 1 − that sampler's draw t of the unshifted flow time,
because the scripts' lookup runs the other way (``scheduler.sigmas`` falls from 1, the noisiest, so u near 0 is
noisy, where the library's t near 0 is clean; the scheduler's shift is applied by that lookup, as for diffusers'
schemes), and
``compute_loss_weighting_for_sd3`` with the same name returns that draw's per-sample weights (1 for a strategy
that does not reweight; importance weights for ``loss-second-moment``), shaped like ``sigmas``. Switching a
script is then one import, plus, for the strategies that learn from the loss or follow the step count, one
:func:`observe` call per optimizer step with the per-sample loss (every library strategy may be given it; the
schedules use it to count steps). A sampler is built once per name, on first use, with :func:`configure`'s
parameters (``total_steps`` for the step-scheduled ones); :func:`state_dict` / :func:`load_state_dict` save and
restore them with a checkpoint.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import timesteps
from .process import FlowProcess

__all__ = [
    "DIFFUSERS_SCHEMES",
    "compute_density_for_timestep_sampling",
    "compute_loss_weighting_for_sd3",
    "configure",
    "load_state_dict",
    "observe",
    "reset",
    "state_dict",
]

#: the weighting schemes diffusers' scripts pass to both functions
DIFFUSERS_SCHEMES = ("logit_normal", "mode", "none", "sigma_sqrt", "cosmap")

_samplers: dict[str, timesteps.TimestepSampler] = {}
_params: dict[str, dict[str, Any]] = {}
_last_weight: dict[str, Tensor] = {}


def _check_scheme(name: str) -> None:
    if name not in DIFFUSERS_SCHEMES and name not in timesteps.REGISTRY:
        allowed = ", ".join([*DIFFUSERS_SCHEMES, *timesteps.names()])
        raise ValueError(f"weighting_scheme={name!r} is not known; allowed: {allowed}")


def configure(weighting_scheme: str, total_steps: int | None = None, **params) -> timesteps.TimestepSampler:
    """Build (again) the sampler of a library strategy with its parameters, e.g. ``configure("clts",
    total_steps=args.max_train_steps)`` or ``configure("ddc", total_steps=..., clusters=10)``; returns it."""
    if weighting_scheme not in timesteps.REGISTRY:
        raise ValueError(
            f"configure({weighting_scheme!r}): not a strategy of this library; allowed: {', '.join(timesteps.names())}"
        )
    _params[weighting_scheme] = {"total_steps": total_steps, **params}
    _samplers[weighting_scheme] = timesteps.build(
        weighting_scheme, FlowProcess(), **_params[weighting_scheme]
    )
    return _samplers[weighting_scheme]


def _sampler(name: str) -> timesteps.TimestepSampler:
    return _samplers[name] if name in _samplers else configure(name, **_params.get(name, {}))


def compute_density_for_timestep_sampling(
    weighting_scheme: str,
    batch_size: int,
    logit_mean: float | None = None,
    logit_std: float | None = None,
    mode_scale: float | None = None,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """u ∈ [0, 1) per sample, [batch_size], on ``device`` (module docstring). A library strategy draws from a
    CPU ``generator`` (or torch's global one) and copies the draw to ``device`` without waiting."""
    _check_scheme(weighting_scheme)
    if weighting_scheme == "logit_normal":
        n = torch.normal(
            mean=logit_mean, std=logit_std, size=(batch_size,), device=device, generator=generator
        )
        return torch.sigmoid(n)
    if weighting_scheme == "mode":
        v = torch.rand(size=(batch_size,), device=device, generator=generator)
        return 1 - v - mode_scale * (torch.cos(math.pi * v / 2) ** 2 - 1 + v)
    if weighting_scheme in DIFFUSERS_SCHEMES:
        return torch.rand(size=(batch_size,), device=device, generator=generator)
    draw = _sampler(weighting_scheme).sample(batch_size, device=device, generator=generator)
    _last_weight[weighting_scheme] = draw.weight
    return 1.0 - draw.t  # the scripts' u: index fraction into sigmas that fall from the noisiest


def compute_loss_weighting_for_sd3(weighting_scheme: str, sigmas: Tensor | None = None) -> Tensor:
    """The per-sample loss weights for ``sigmas`` (module docstring); for a library strategy, the weights of its
    last draw, shaped like ``sigmas`` (1 before any draw)."""
    _check_scheme(weighting_scheme)
    if weighting_scheme == "sigma_sqrt":
        return (sigmas**-2.0).float()
    if weighting_scheme == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas**2))
    if weighting_scheme in DIFFUSERS_SCHEMES:
        return torch.ones_like(sigmas)
    w = _last_weight.get(weighting_scheme)
    if w is None or w.shape[0] != sigmas.shape[0]:
        return torch.ones_like(sigmas)
    return (
        w.to(device=sigmas.device, dtype=sigmas.dtype).view(-1, *([1] * (sigmas.dim() - 1))).expand_as(sigmas)
    )


def observe(weighting_scheme: str, u: Tensor, per_sample_loss: Tensor) -> None:
    """Report a step's per-sample losses ([B], e.g. ``((pred − target)² ).flatten(1).mean(1)``) for the draw
    ``u`` of a library strategy; nothing for diffusers' own schemes. Call once per optimizer step."""
    _check_scheme(weighting_scheme)
    if weighting_scheme not in DIFFUSERS_SCHEMES:
        _sampler(weighting_scheme).observe(1.0 - u, per_sample_loss.detach())  # back to the sampler's own t


def state_dict() -> dict[str, Any]:
    """Every library sampler built so far, with its parameters: save it with the checkpoint."""
    return {
        name: {"params": dict(_params.get(name, {})), "state": s.state_dict()}
        for name, s in _samplers.items()
    }


def load_state_dict(state: dict[str, Any]) -> None:
    """Rebuild and restore the samplers of a :func:`state_dict`."""
    for name, entry in state.items():
        configure(name, **entry["params"]).load_state_dict(entry["state"])


def reset() -> None:
    """Forget every sampler (a fresh start, e.g. between two trainings in one process)."""
    _samplers.clear()
    _params.clear()
    _last_weight.clear()
