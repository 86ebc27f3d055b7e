"""What the training step keeps on the device so that it never waits for it (docs/design.md, "The device
contract"; docs/reliability.md, "Non-finite losses"): the loss statistics read at log points, the zeroing of
non-finite gradients, and the agreement of the ranks on when to stop.

The step itself never reads device data on the host. The loss of every step is added on the device
(:class:`StepStats`) and read once per log interval; a non-finite loss is detected there too — its step index is
kept on the device — and meanwhile its gradients are zeroed (:func:`zero_nonfinite_grads`, as EDM2's training
loop does: Karras et al. 2024, ``training/training_loop.py``), so no non-finite value reaches the weights. Under
data parallelism the ranks agree on a stop request every :data:`STOP_EVERY` steps with a lagged collective
(:class:`StopAgreement`), not with a barrier before every backward.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..device import HostCopy, to_device

#: steps between two agreements of the ranks on a stop request (Ctrl-C, SIGTERM); a request is acted on within
#: two such intervals, after the same step on every rank
STOP_EVERY = 10


class StepStats:
    """The loss statistics on the device: the sum and the count of the finite losses since the last read, the
    count of non-finite ones so far, and the first step (1-based) whose loss was not finite, with its value.

    :meth:`add` is device work only; :meth:`read` is the one host read (at a log point), and with several
    processes it sums the ranks' statistics first (one collective). :meth:`state_dict` / :meth:`load_state_dict`
    keep the running sums exact across a resume."""

    def __init__(self, device: torch.device):
        self.device = device
        # [loss sum, finite steps, non-finite steps] in float64; the first bad step and its loss
        self._acc = torch.zeros(3, dtype=torch.float64, device=device)
        self._first_bad = torch.full((2,), math.inf, dtype=torch.float64, device=device)

    def add(self, loss: Tensor, step: int) -> Tensor:
        """Count step ``step``'s (1-based) scalar ``loss``; return whether it is finite (a device bool)."""
        loss = loss.detach().to(torch.float64)
        ok = torch.isfinite(loss)
        self._acc += torch.stack([torch.where(ok, loss, 0.0), ok.to(torch.float64), (~ok).to(torch.float64)])
        first = ~ok & torch.isinf(self._first_bad[0])  # no bad step yet, and this one is bad
        self._first_bad[0] = torch.where(first, float(step), self._first_bad[0])  # a scalar operand: no copy
        self._first_bad[1] = torch.where(first, loss, self._first_bad[1])
        return ok

    def read(self, world: int = 1, reset: bool = True) -> dict[str, Any]:
        """``{"loss_sum", "loss_count", "skipped", "first_bad_step", "first_bad_value"}`` as Python numbers (over
        every rank when ``world`` > 1: a collective; the bad value is then ``None``); the sums restart when
        ``reset``."""
        acc, bad = self._acc, self._first_bad
        if world > 1:
            acc, bad = acc.clone(), bad.clone()
            torch.distributed.all_reduce(acc)
            torch.distributed.all_reduce(bad[:1], op=torch.distributed.ReduceOp.MIN)
        total, count, skipped = acc.tolist()
        step, value = bad.tolist()
        if reset:  # the loss sums restart; the count of non-finite steps runs on
            self._acc[:2].zero_()
        return {
            "loss_sum": total,
            "loss_count": int(count),
            "skipped": int(skipped),
            "first_bad_step": None if math.isinf(step) else int(step),
            # the value is this rank's own: with several ranks, the bad step may have been another's
            "first_bad_value": value if world == 1 else None,
        }

    def forget_bad(self) -> None:
        """Forget the first bad step (after it was reported, with ``on_nonfinite=skip``)."""
        self._first_bad.fill_(math.inf)

    def state_dict(self) -> dict[str, Any]:
        """This rank's running sums (a host read: a checkpoint's cost)."""
        total, count, skipped = self._acc.tolist()
        return {"loss_sum": total, "loss_count": int(count), "skipped": int(skipped)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the running sums of a :meth:`state_dict`."""
        values = [float(state["loss_sum"]), float(state["loss_count"]), float(state["skipped"])]
        self._acc.copy_(torch.tensor(values, dtype=torch.float64))


def zero_nonfinite_grads(params: list[torch.nn.Parameter]) -> None:
    """Replace every NaN and ±inf in the gradients by 0, on the device (EDM2's guard: a non-finite loss makes
    non-finite gradients, and none of it reaches the weights). A step whose loss was not finite thus updates
    with zero gradient: the optimizer's running averages still move the weights by their decayed momentum."""
    for p in params:
        if p.grad is not None:
            torch.nan_to_num(p.grad, nan=0.0, posinf=0.0, neginf=0.0, out=p.grad)


class StopAgreement:
    """Whether any rank was asked to stop, agreed every :data:`STOP_EVERY` steps without a barrier: at each
    agreement step the ranks' flags are summed on the device (one all-reduce) and read at the next agreement
    step, by then long finished. Every rank therefore stops after the same step, at most two intervals after the
    request. In a single process a request is acted on after the step it arrives in."""

    def __init__(self, device: torch.device, world: int, every: int | None = None):
        self.device, self.world = device, world
        self.every = STOP_EVERY if every is None else int(every)
        self._pending: HostCopy | None = None

    def should_stop(self, step: int, requested: bool) -> bool:
        """Called after every step (``step`` done, ``requested``: this rank's own flag)."""
        if self.world == 1:
            return requested
        if step % self.every:
            return False
        agreed = self._pending is not None and bool(self._pending.get()[0] > 0)
        flag = to_device(torch.tensor([float(requested)], dtype=torch.float32), self.device)
        torch.distributed.all_reduce(flag)
        self._pending = HostCopy(flag)
        return agreed
