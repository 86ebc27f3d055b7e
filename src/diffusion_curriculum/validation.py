"""A fixed, stratified validation loss per noise level: the same (x0, t, noise) at every evaluation.

The noise-level range is split into the ``n`` buckets of :mod:`~diffusion_curriculum.noise_levels` (the buckets of
a run's drawn-noise histogram); each bucket gets ``per_bucket`` entries at evenly spread levels inside it
(:func:`~diffusion_curriculum.noise_levels.stratified`), each with its own clean sample and Gaussian noise, drawn
once from a CPU generator seeded with the evaluation seed. Scoring a model on this set at every evaluation gives
loss curves per noise level whose only noise is the model's own: no fresh draw of t, x0 or noise between
evaluations (one uniform draw of t dominates a single-batch loss), and the same set for every run of a seed, a
method and a number of processes.

The clean samples come from the held-out split (``dataset.val_fraction``) when there is one (``on="held-out"``),
else from the training data (``on="train"``, labelled so: a loss on samples the model trains on is not a
generalisation measure, but it is what the exact optimal loss of :mod:`~diffusion_curriculum.optimal_loss` bounds).

Logged per evaluation (:func:`record`): ``val_loss`` (the mean over buckets, i.e. uniform over the noise levels)
and ``val_loss/<k>`` in the run's prediction space (unweighted squared error, as ``eval_loss``); ``val_x0_mse``
and ``val_x0_mse/<k>``, the squared error of the clean-sample estimate, comparable between runs of different
predictions; and, given the optimal loss J*(t), ``val_excess`` and ``val_excess/<k>`` = loss − J*.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import noise_levels
from .data import Dataset
from .loss import DenoisingLoss

__all__ = ["ValidationSet", "bucket_means", "build", "record", "scores"]


@dataclass
class ValidationSet:
    """``buckets × per_bucket`` entries, bucket by bucket: clean samples ``x0`` (rows ``index`` of the source
    data), ``noise``, noise levels ``t``, their ``bucket``, class ``labels`` (or ``None``), and ``on``: ``"train"``
    or ``"held-out"``. CPU tensors; :meth:`to` moves them."""

    x0: Tensor
    noise: Tensor
    t: Tensor
    bucket: Tensor
    labels: Tensor | None
    index: Tensor
    buckets: int
    on: str

    def to(self, device) -> ValidationSet:
        """This set with its tensors on ``device``."""

        def mv(x):
            return None if x is None else x.to(device)

        return ValidationSet(
            mv(self.x0),
            mv(self.noise),
            mv(self.t),
            mv(self.bucket),
            mv(self.labels),
            self.index,
            self.buckets,
            self.on,
        )


def build(dataset: Dataset, process, *, buckets: int, per_bucket: int, seed: int) -> ValidationSet:
    """The validation set of ``dataset`` (its ``val_data`` when it holds samples out, else its training ``data``)
    for ``process``: levels from :func:`~diffusion_curriculum.noise_levels.stratified`, then the rows (a random
    permutation of the source, repeated as often as needed, so no row repeats before every row is used) and the
    noise from ``torch.Generator().manual_seed(seed)`` on the CPU."""
    held = dataset.val_data is not None
    labels = dataset.val_labels if held else dataset.labels
    size = len(dataset.val_data) if held else len(dataset)
    n = buckets * per_bucket
    g = torch.Generator().manual_seed(seed)
    rounds = -(-n // size)
    index = torch.cat([torch.randperm(size, generator=g) for _ in range(rounds)])[:n]
    x0 = dataset.val_data[index] if held else dataset.rows(index)  # only the rows drawn are decoded
    noise = torch.randn(x0.shape, generator=g)
    t = noise_levels.stratified(process, buckets, per_bucket)
    bucket = torch.arange(buckets).repeat_interleave(per_bucket)
    y = None if labels is None else labels[index]
    return ValidationSet(x0, noise, t, bucket, y, index, buckets, "held-out" if held else "train")


@torch.no_grad()
def scores(
    loss: DenoisingLoss,
    net: nn.Module,
    vset: ValidationSet,
    *,
    batch_size: int = 500,
    conditional: bool = False,
) -> tuple[Tensor, Tensor]:
    """Per-entry squared errors of ``net`` on ``vset`` (on ``vset``'s device), float32 on the CPU: in the
    prediction space of ``loss`` (``loss.error``'s per-sample mean, unweighted) and of the clean-sample estimate
    ``process.predict_x0`` against x0. ``conditional``: the net is called with the entries' labels."""
    pred, x0_err = [], []
    for i in range(0, len(vset.t), batch_size):
        sl = slice(i, i + batch_size)
        x0, noise, t = vset.x0[sl], vset.noise[sl], vset.t[sl]
        y = vset.labels[sl] if conditional and vset.labels is not None else None
        out, x_t, target = loss.forward(net, x0, noise, t, labels=y)
        out = out.float()
        pred.append((out - target).pow(2).flatten(1).mean(1))
        x0_hat = loss.process.predict_x0(out, x_t, t, loss.prediction)
        x0_err.append((x0_hat - x0).pow(2).flatten(1).mean(1))
    return torch.cat(pred).cpu(), torch.cat(x0_err).cpu()


def bucket_means(values: Tensor, vset: ValidationSet) -> list[float]:
    """The mean of ``values`` (one per entry) in each bucket, bucket 0 first."""
    sums = torch.zeros(vset.buckets, dtype=torch.float64).index_add_(0, vset.bucket.cpu(), values.double())
    counts = torch.bincount(vset.bucket.cpu(), minlength=vset.buckets).double()
    return (sums / counts).tolist()


def record(pred: list[float], x0_mse: list[float], floor: list[float] | None = None) -> dict[str, float]:
    """The evaluation record's keys (module docstring) from per-bucket means; ``floor``: J* per bucket."""
    rec: dict[str, float] = {}
    series = [("val_loss", pred), ("val_x0_mse", x0_mse)]
    if floor is not None:
        series.append(("val_excess", [p - f for p, f in zip(pred, floor)]))
    for name, values in series:
        rec[name] = sum(values) / len(values)
        rec.update({f"{name}/{k}": v for k, v in enumerate(values)})
    return rec
