"""The exact optimal denoising loss of a finite training set: the floor J*(t) under a model's loss per noise level.

For training data {x_1 … x_N} (uniform over the set, as a model trained on it sees it) and a process with
x_t = a(t)·x0 + s(t)·ε (VP: a = √ᾱ_t, s = √(1 − ᾱ_t); EDM: a = 1, s = σ; flow: a = 1 − t', s = t'), the
posterior over which sample was noised is a softmax over the set, and the best possible denoiser is its mean
(the minimum-mean-squared-error estimate; the idea of measuring it follows "optimal loss" estimation for
diffusion training, arXiv 2506.13763; the derivation is the project's, docs/methods.md "Optimal loss of a finite
training set"):

    p(i | x_t) = softmax_i(−‖x_t − a·x_i‖² / (2s²)),      E[x0 | x_t] = Σ_i p(i | x_t)·x_i          (1)

Every prediction target is affine in (x0, ε) once x_t is fixed (ε = (x_t − a·x0)/s), so the output that
minimises the expected squared error is the target at the posterior means,

    out*(x_t) = target(x̂0, ε̂, t),   x̂0 = E[x0 | x_t],  ε̂ = (x_t − a·x̂0)/s                        (2)

and J*(t) is the mean squared error of out* against the true target, here measured on the fixed entries of a
:class:`~diffusion_curriculum.validation.ValidationSet` (so a model's loss minus J* is paired entry by entry).
Class-conditional: the softmax runs over the samples of the entry's class only (the model is scored with labels).

J* is the loss of the estimator that memorises the training set. On entries drawn from the training data it
bounds every model's expected loss from below (a model can beat it on one draw by chance, not in expectation).
On held-out samples it bounds nothing: the memorising optimum is not optimal for data it has not seen.

The cost is N·D multiply-adds per entry (float64, on the CPU); :data:`MAX_WORK` bounds the total.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import Tensor

from . import validation
from .errors import ConfigError
from .validation import ValidationSet, bucket_means

__all__ = [
    "MAX_WORK",
    "OptimalLossError",
    "cached_floor",
    "coefficients",
    "floor",
    "per_bucket_floor",
    "posterior_mean",
]

#: the most multiply-adds (entries × N × D) :func:`floor` takes on: about half a minute on one CPU core
MAX_WORK = 2e10
#: entries per block of the posterior (bounds the [block, N] logit matrix)
BLOCK = 64


class OptimalLossError(ConfigError):
    """The optimal loss of a dataset cannot be computed (too large)."""


def coefficients(process, t: Tensor) -> tuple[Tensor, Tensor]:
    """(a, s) of x_t = a·x0 + s·ε at each level ``t``, float64 ``[B]``, read off ``process.add_noise`` (it is
    linear in x0 and ε for every process)."""
    one = torch.ones(len(t), 1, dtype=torch.float64)
    zero = torch.zeros_like(one)
    return process.add_noise(one, zero, t).view(-1), process.add_noise(zero, one, t).view(-1)


def posterior_mean(
    data: Tensor,
    x_t: Tensor,
    a: Tensor,
    s: Tensor,
    data_labels: Tensor | None = None,
    labels: Tensor | None = None,
) -> Tensor:
    """E[x0 | x_t] under the uniform distribution on the rows of ``data`` ([N, D], eq. 1), for queries ``x_t``
    ([B, D]) with coefficients ``a``, ``s`` ([B]); float64. With ``labels`` ([B]) each query's softmax runs over
    the rows whose ``data_labels`` equal its label."""
    data, x_t = data.double(), x_t.double()
    sq = data.pow(2).sum(1)  # ‖x_i‖²
    # ‖x_t − a x_i‖² = ‖x_t‖² − 2a⟨x_t, x_i⟩ + a²‖x_i‖²; the ‖x_t‖² term is the same for every i: dropped
    dist = -2 * a[:, None] * (x_t @ data.T) + a[:, None].pow(2) * sq[None, :]
    logits = -dist / (2 * s[:, None].pow(2))
    if labels is not None:
        logits = logits.masked_fill(data_labels[None, :] != labels[:, None], float("-inf"))
    return torch.softmax(logits, dim=1) @ data


def floor(
    process, prediction: str, data: Tensor, vset: ValidationSet, data_labels: Tensor | None = None
) -> Tensor:
    """J* per entry of ``vset`` (eq. 2): the squared error, averaged over a sample's elements, of the optimal
    denoiser for the training set ``data`` ([N, ...]) in the prediction space ``prediction``; float64, CPU.
    ``data_labels``: condition on the entries' class labels. Raises :class:`OptimalLossError` past
    :data:`MAX_WORK`."""
    n, d = data.shape[0], data[0].numel()
    work = len(vset.t) * n * d
    if work > MAX_WORK:
        raise OptimalLossError(
            f"the optimal loss of {n} samples of {d} values at {len(vset.t)} validation entries needs {work:.1e} "
            f"multiply-adds, over the limit of {MAX_WORK:.0e} (about half a minute on one CPU core); use fewer "
            "samples (dataset.n) or fewer entries (eval.val_per_bucket)"
        )
    flat = data.reshape(n, d).double().cpu()
    conditional = data_labels is not None and vset.labels is not None
    out = []
    for i in range(0, len(vset.t), BLOCK):
        sl = slice(i, i + BLOCK)
        x0 = vset.x0[sl].double().cpu()
        noise, t = vset.noise[sl].double().cpu(), vset.t[sl].cpu()
        a, s = coefficients(process, t)
        x_t = process.add_noise(x0, noise, t)
        y = vset.labels[sl].cpu() if conditional else None
        x0_hat = posterior_mean(flat, x_t.reshape(len(t), d), a, s, data_labels, y).reshape(x0.shape)
        eps_hat = (x_t - _bcast(a, x_t) * x0_hat) / _bcast(s, x_t)
        best = process.target(x0_hat, eps_hat, t, prediction, x_t)
        target = process.target(x0, noise, t, prediction, x_t)
        out.append((best - target).pow(2).flatten(1).mean(1))
    return torch.cat(out)


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def fingerprint(
    process, prediction: str, data: Tensor, vset: ValidationSet, data_labels: Tensor | None
) -> str:
    """A hash of everything J* depends on: the training data (and labels), the entries, the process's
    coefficients and target at the entries' levels, and the prediction."""
    h = hashlib.sha256()
    a, s = coefficients(process, vset.t.cpu())
    for x in (data, data_labels, vset.x0, vset.noise, vset.t, vset.labels, a, s):
        if x is not None:
            h.update(x.detach().cpu().contiguous().numpy().tobytes())
    h.update(f"{type(process).__name__}|{process!r}|{prediction}".encode())
    return h.hexdigest()[:32]


def cached_floor(
    path: str | os.PathLike,
    process,
    prediction: str,
    data: Tensor,
    vset: ValidationSet,
    data_labels: Tensor | None = None,
) -> list[float]:
    """J* per bucket of ``vset`` (the mean of :func:`floor` over each bucket's entries), read from the JSON file
    ``path`` when it holds the value of the same :func:`fingerprint`, else computed and written there."""
    path = Path(path)
    key = fingerprint(process, prediction, data, vset, data_labels)
    try:
        saved = json.loads(path.read_text())
        if saved.get("fingerprint") == key:
            return [float(v) for v in saved["per_bucket"]]
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    per_bucket = bucket_means(floor(process, prediction, data, vset, data_labels), vset)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"fingerprint": key, "per_bucket": per_bucket}) + "\n")
    os.replace(tmp, path)
    return per_bucket


def per_bucket_floor(
    process,
    prediction: str,
    data: Tensor,
    buckets: int,
    *,
    per_bucket: int = 32,
    seed: int = 0,
    labels: Tensor | None = None,
) -> list[float]:
    """J* of the training set ``data`` ([N, ...]) per noise-level bucket (the ``buckets`` buckets of
    :mod:`~diffusion_curriculum.noise_levels`), estimated on ``per_bucket`` fixed entries per bucket
    (:func:`~diffusion_curriculum.validation.build` from ``seed``): what the ``optimal-gap`` sampler's
    ``set_floor`` takes. ``labels``: a class-conditional model's labels (the floor conditions on them)."""
    from .data import Dataset

    source = Dataset(data, labels, "data", "points", value_range=None)
    vset = validation.build(source, process, buckets=buckets, per_bucket=per_bucket, seed=seed)
    return bucket_means(floor(process, prediction, data, vset, labels), vset)
