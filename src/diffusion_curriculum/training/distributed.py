"""Data-parallel plumbing for the trainer: joining the process group, sharing rank 0's outcome, relaying an
error one rank sees to every rank, and the few reductions a step needs.

Every function here is a collective where it says so: every rank calls it, in the same order. In a single
process (``world`` = 1) none of them is needed, and the trainer does not call them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from .. import checkpoint, data
from ..checks import first_line
from ..errors import ConfigError, TrainingError
from .components import resolve_device


@dataclass
class DistContext:
    """Where this process stands in a data-parallel run: (0, 1, 0) in a single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    #: whether the trainer created the process group (and so destroys it at the end)
    owns_group: bool = False


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"environment variable {name}={raw!r} is not an integer; launch with torchrun, which sets it"
        ) from None


def dist_timeout() -> timedelta:
    """How long a rank waits in a collective (for rank 0's evaluation or checkpoint, say) before giving up:
    ``DIFFUSION_CURRICULUM_DIST_TIMEOUT_MIN`` minutes, default 30."""
    raw = os.environ.get("DIFFUSION_CURRICULUM_DIST_TIMEOUT_MIN", "") or "30"
    try:
        minutes = float(raw)
    except ValueError:
        minutes = -1.0
    if not (math.isfinite(minutes) and minutes > 0):
        raise ConfigError(
            f"DIFFUSION_CURRICULUM_DIST_TIMEOUT_MIN={raw!r} is invalid; allowed: a positive number of minutes"
        )
    return timedelta(minutes=minutes)


def _local_gpu(device: torch.device, device_name: str, initialised: bool, env_world: int) -> torch.device:
    """This rank's GPU, ``cuda:LOCAL_RANK``, made the current device; a ConfigError for a device that names
    one GPU in a multi-process run or a LOCAL_RANK beyond the visible GPUs."""
    dist = torch.distributed
    if initialised:
        local = _env_int("LOCAL_RANK", dist.get_rank() % torch.cuda.device_count())
    else:
        local = _env_int("LOCAL_RANK", 0)
    world = dist.get_world_size() if initialised else env_world
    if device.index is not None and world > 1:
        raise ConfigError(
            f"device={device_name!r} names one GPU but this run has {world} processes; use device=cuda "
            "(or auto): each process takes cuda:LOCAL_RANK"
        )
    if not 0 <= local < torch.cuda.device_count():
        raise ConfigError(
            f"LOCAL_RANK={local} but only {torch.cuda.device_count()} GPU(s) are visible; start at most "
            "that many processes per node (torchrun --nproc_per_node)"
        )
    device = torch.device("cuda", local)
    torch.cuda.set_device(device)  # before the group exists, so NCCL binds this rank to its own GPU
    return device


def setup_distributed(device_name: str) -> tuple[DistContext, torch.device]:
    """Join (or create, from torchrun's environment) the default process group; return it and this rank's
    device.

    An initialised default group is used as it is. Otherwise, when ``WORLD_SIZE`` > 1, the group is created
    from ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` (``env://``) with backend ``nccl`` for a
    GPU device and ``gloo`` for the CPU. On a GPU each rank takes ``cuda:LOCAL_RANK``. Without either, nothing
    is created: ``(DistContext(), resolve_device(device_name))``.
    """
    dist = torch.distributed
    device = resolve_device(device_name)
    initialised = dist.is_available() and dist.is_initialized()
    env_world = _env_int("WORLD_SIZE", 1)
    if not initialised and env_world <= 1:
        return DistContext(), device
    if not dist.is_available():
        raise ConfigError(
            f"WORLD_SIZE={env_world} asks for {env_world} processes but this PyTorch build has no "
            "torch.distributed; run a single process or install a PyTorch with distributed support"
        )
    if device.type == "cuda":
        device = _local_gpu(device, device_name, initialised, env_world)
        local = device.index
    else:
        local = _env_int("LOCAL_RANK", 0)
    if initialised:
        return DistContext(dist.get_rank(), dist.get_world_size(), local, owns_group=False), device
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=dist_timeout())
    return DistContext(dist.get_rank(), dist.get_world_size(), local, owns_group=True), device


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in :class:`~torch.nn.parallel.DistributedDataParallel` (gradients averaged over the ranks),
    on this rank's GPU or the CPU."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def close(ctx: DistContext) -> None:
    """Destroy the process group if ``ctx`` created it (from torchrun's environment); a group the caller
    created is left alone."""
    if ctx.owns_group and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    ctx.owns_group = False


# -- error relay ---------------------------------------------------------------------------------------------
def _error_classes() -> dict[str, type[BaseException]]:
    """The errors a rank re-raises when another rank reports one (by class name); anything else becomes a
    RuntimeError."""
    return {
        "ConfigError": ConfigError,
        "CheckpointError": checkpoint.CheckpointError,
        "DataError": data.DataError,
        "TrainingError": TrainingError,
        "OSError": OSError,
    }


def _report(e: BaseException) -> tuple[str, str]:
    """(the nearest known error class name, the first line of the message), to send to the other ranks."""
    known = _error_classes()
    kind = next((c.__name__ for c in type(e).__mro__ if c.__name__ in known), type(e).__name__)
    return kind, first_line(e)


def _remote_error(report: tuple[str, str], rank: int) -> BaseException:
    kind, msg = report
    return _error_classes().get(kind, RuntimeError)(f"{msg} (reported by rank {rank})")


def from_rank0(value: Any, err: BaseException | None) -> Any:
    """Rank 0's ``value`` on every rank, or rank 0's error ``err`` raised on every rank (a collective)."""
    msg = [value, None if err is None else _report(err)]
    torch.distributed.broadcast_object_list(msg, src=0)
    if err is not None:
        raise err
    if msg[1] is not None:
        raise _remote_error(msg[1], 0)
    return msg[0]


def run_on_rank0(fn: Callable[[], Any], rank: int) -> Any:
    """Call ``fn`` on rank 0 only; its value on every rank, or its error raised on every rank (a collective)."""
    value, err = None, None
    if rank == 0:
        try:
            value = fn()
        except Exception as e:
            err = e
    return from_rank0(value, err)


def all_ok(err: BaseException | None, world: int) -> None:
    """Raise on every rank if any rank's part failed: its own error, else the first failing rank's (a
    collective)."""
    reports: list[Any] = [None] * world
    torch.distributed.all_gather_object(reports, None if err is None else _report(err))
    if err is not None:
        raise err
    for r, rep in enumerate(reports):
        if rep is not None:
            raise _remote_error(rep, r)


# -- reductions ----------------------------------------------------------------------------------------------
def gather_to_rank0(obj: Any, rank: int, world: int) -> list[Any] | None:
    """Every rank's ``obj`` (picklable), in rank order, on rank 0; ``None`` on the others (a collective)."""
    gathered: list[Any] | None = [None] * world if rank == 0 else None
    torch.distributed.gather_object(obj, gathered, dst=0)
    return gathered


def average_grads(params: list[torch.nn.Parameter], world: int) -> None:
    """Average the gradients of parameters outside the DDP-wrapped model (a learned weighting's) over the ranks:
    one all-reduce of their flattened gradients, so every rank takes the same optimizer step."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    i = 0
    for p, g in zip(params, grads):
        p.grad = flat[i : i + g.numel()].view_as(p).clone()
        i += g.numel()


def follow_rank0(
    loaded: tuple[Any, int] | None, rank: int, load_state: Callable[[dict], None], device: Any = None
) -> Exception | None:
    """On a rank other than 0, load (``load_state``) the checkpoint rank 0 resumed from (``loaded``: its path
    and step, or ``None``); return the error to share with every rank (:func:`all_ok`), if any."""
    if rank == 0 or loaded is None:
        return None
    try:
        _, state = checkpoint.load(loaded[0], device)
        load_state(state)
    except checkpoint.CheckpointError as e:
        return checkpoint.CheckpointError(
            f"rank {rank} cannot use {str(loaded[0])!r}, which rank 0 resumed from ({e}); the run "
            "directory must be on storage every node sees"
        )
    except Exception as e:
        return e
    return None
