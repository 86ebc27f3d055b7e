"""Crossing between the host and the training device without stalling it: the one home of the library's
host-to-device and device-to-host copies on the per-step path (docs/design.md, "The device contract").

Every synchronisation of a CUDA device with the host empties the device's queue: the host can no longer run
ahead, and a step costs host time plus device time. So the per-step path never reads device data on the host.
Data goes *to* the device with :func:`to_device` (pinned memory, non-blocking copy: the host does not wait), and
comes *back* with :class:`HostCopy` (a non-blocking copy into pinned memory, read steps later, when the device
has long finished it). On the CPU (and on ``meta``) both are plain copies, so one code path serves every device
and gives the same numbers.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["HostCopy", "check_generator", "synchronize", "to_device"]


def _is_cuda(device: torch.device | str | None) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def to_device(x: Tensor, device: torch.device | str | None) -> Tensor:
    """``x`` (a CPU tensor) on ``device`` without making the host wait: on CUDA through pinned memory with a
    non-blocking copy (the caching host allocator keeps the pinned block until the copy is done); elsewhere a
    plain ``to``; ``x`` itself when ``device`` is ``None``."""
    if device is None:
        return x
    if _is_cuda(device) and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def check_generator(generator: torch.Generator | None, who: str) -> None:
    """A ``ValueError`` in one sentence when ``generator`` is not a CPU generator: ``who`` draws on the CPU."""
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(
            f"{who} draws on the CPU but was given a generator on {generator.device}; pass a CPU generator "
            "(torch.Generator(), seeded as you like) or None: the draw is copied to the device without a wait"
        )


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a CUDA device; nothing elsewhere): for timings at log points."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class HostCopy:
    """A device tensor copied to the host without waiting: the copy is queued now, :meth:`get` returns it later.

    On CUDA the copy goes into pinned memory with ``non_blocking=True`` and an event is recorded behind it;
    :meth:`get` waits on that event only, so a copy taken one or more steps earlier costs nothing (the device
    finished it long ago) and never waits for the step in flight. On the CPU it is a copy taken at once.
    """

    def __init__(self, x: Tensor):
        x = x.detach()
        if x.device.type == "cuda":
            self._host = torch.empty(x.shape, dtype=x.dtype, device="cpu", pin_memory=True)
            self._host.copy_(x, non_blocking=True)
            self._event: torch.cuda.Event | None = torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(x.device))
        else:
            self._host = x.to("cpu", copy=True) if x.device.type != "meta" else x
            self._event = None

    def get(self) -> Tensor:
        """The host copy (waits for the copy alone, if it is still running)."""
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        return self._host
