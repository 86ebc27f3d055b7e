"""Lagged, windowed observations: how a sampler that learns from the losses reads them without stalling the
device (docs/design.md, "The device contract").

A sampler's :meth:`~.base.TimestepSampler.observe` reduces each step's losses *on their device* to a small
statistics tensor (``index_add_``, no data-dependent shapes) and hands it to :class:`LaggedStats`. Every
``window`` steps the window's statistics are stacked, combined over the ranks in one collective (sum or
gather, on the device), and copied to the host without waiting (:class:`~diffusion_curriculum.device.HostCopy`).
A window is read ``lag`` windows later, when the device finished it long ago, and applied to the sampler's host
state one step at a time, in order. So an observation of step s reaches the sampler's decisions between
``window·lag`` and ``window·(lag + 1) − 1`` steps later, on every device alike (the CPU included: the same
numbers everywhere), and nothing on the per-step path waits for the step in flight.

Resume is exact: the pending windows (already combined) and this rank's partial window travel in the
sampler's state (``"observations"``; the partial window is per rank, which the trainer saves per rank).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
from torch import Tensor

from ..device import HostCopy

#: steps per window (one collective per window under data parallelism) and windows of delay before a window is
#: applied [the project's choice: a reading lag of 4-7 steps, far below what any sampler here reacts to]
WINDOW = 4
LAG = 1
REDUCTIONS = ("sum", "gather")


def _world(group: Any = None) -> int:
    d = torch.distributed
    return d.get_world_size(group) if d.is_available() and d.is_initialized() else 1


class LaggedStats:
    """Per-step statistics of one sampler, read ``lag`` windows of ``window`` steps late (see the module).

    ``reduce``: how the ranks' statistics combine — ``"sum"`` (an ``all_reduce``: per-bucket sums and counts) or
    ``"gather"`` (an ``all_gather``, rank order, concatenated along the last dimension: per-sample values).
    ``push(stats, tag)`` returns the host statistics now due, oldest first, each with the ``tag`` it was pushed
    with (a plain value, e.g. the curriculum stage the draw was made in) and ``world``, the ranks it combines.
    Meta tensors (shape-only tracing) are accepted and never applied.
    """

    def __init__(self, reduce: str, window: int | None = None, lag: int | None = None):
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce={reduce!r} is invalid; allowed: {', '.join(REDUCTIONS)}")
        self.reduce = reduce
        self.window = WINDOW if window is None else int(window)
        self.lag = LAG if lag is None else int(lag)
        #: the process group the statistics combine over (None: the default group, when one is initialised)
        self.group: Any = None
        self._partial: list[Tensor] = []  # this rank's statistics of the window being filled
        self._partial_tags: list[Any] = []
        self._queue: deque[tuple[HostCopy, list[Any], int]] = deque()  # combined windows, not yet applied

    def push(self, stats: Tensor, tag: Any = None) -> list[tuple[Tensor, Any, int]]:
        """Add one step's statistics; return the steps now due (host tensors), oldest first."""
        if (
            self._partial and self._partial[0].device != stats.device
        ):  # resumed: the saved rows are on the host
            self._partial = [s.to(stats.device) for s in self._partial]
        self._partial.append(stats.detach())
        self._partial_tags.append(tag)
        if len(self._partial) < self.window:
            return []
        block, tags = torch.stack(self._partial), self._partial_tags
        self._partial, self._partial_tags = [], []
        world = _world(self.group)
        if world > 1:
            block = self._combine(block, world)
        if block.device.type != "meta":
            self._queue.append((HostCopy(block), tags, world))
        due: list[tuple[Tensor, Any, int]] = []
        while len(self._queue) > self.lag:
            copy, tags, w = self._queue.popleft()
            host = copy.get()
            due.extend((host[i], tag, w) for i, tag in enumerate(tags))
        return due

    def _combine(self, block: Tensor, world: int) -> Tensor:
        """One collective for the window: the sum over ranks, or every rank's values side by side."""
        if self.reduce == "sum":
            block = block.clone()
            torch.distributed.all_reduce(block, group=self.group)
            return block
        parts = [torch.empty_like(block) for _ in range(world)]
        torch.distributed.all_gather(parts, block.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)

    # -- state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The pending windows (combined; the same on every rank) and this rank's partial window, on the host.
        Reading them waits for their copies: a checkpoint's cost, not a step's."""
        return {
            "windows": [copy.get().clone() for copy, _, _ in self._queue],
            "window_tags": [list(tags) for _, tags, _ in self._queue],
            "window_world": [w for _, _, w in self._queue],
            "partial": [s.cpu().clone() for s in self._partial],
            "partial_tags": list(self._partial_tags),
        }

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict`; ``None`` (a checkpoint written before observations were lagged) starts
        empty. The partial window joins the losses' device at the next :meth:`push`."""
        self._queue.clear()
        self._partial, self._partial_tags = [], []
        if not state:
            return
        for block, tags, w in zip(state["windows"], state["window_tags"], state["window_world"]):
            self._queue.append((HostCopy(torch.as_tensor(block)), _tags(tags), int(w)))
        self._partial = [torch.as_tensor(s) for s in state["partial"]]
        self._partial_tags = _tags(state["partial_tags"])


def _tags(tags: list[Any]) -> list[Any]:
    """Tags as saved (JSON turns tuples into lists): lists back to tuples, so they compare with fresh ones."""
    return [tuple(t) if isinstance(t, list) else t for t in tags]


def bucket_sums(buckets: Tensor, per_sample_loss: Tensor, k: int) -> Tensor:
    """One step's loss sums and counts per bucket, float64 ``[2, k]`` on the losses' device (no host read):
    ``buckets`` holds each sample's bucket index in [0, k); non-finite losses are left out of both rows. Computed
    as a small matrix product with the one-hot buckets, which is deterministic on every device (a float
    ``index_add`` on a GPU adds in a random order). What the bucketed samplers queue in :class:`LaggedStats`."""
    loss = per_sample_loss.detach().reshape(-1).to(torch.float64)
    b = buckets.to(loss.device)
    ok = torch.isfinite(loss)
    one_hot = (b[:, None] == torch.arange(k, device=b.device)).to(torch.float64)
    stats = one_hot.T @ torch.stack([torch.where(ok, loss, torch.zeros_like(loss)), ok.to(torch.float64)], 1)
    return stats.T


def moving_average(avg: Tensor, sums: Tensor, counts: Tensor, seen: Tensor, rate: float) -> Tensor:
    """Per-bucket moving averages ``avg`` moved by one step's loss sums and counts (:func:`bucket_sums`, on the
    host): a bucket the step hit moves by ``rate`` towards the step's mean, ``avg + rate·(m − avg)``, or starts at
    that mean when ``seen`` says it had no observation before; the other buckets keep their value."""
    hit = counts > 0
    m = torch.where(hit, sums / counts.clamp(min=1), torch.zeros_like(sums))
    first = hit & (seen == 0)
    return torch.where(first, m, torch.where(hit, avg + rate * (m - avg), avg))
