"""Classifier-free guidance for class-conditional models (Ho & Salimans 2022, "Classifier-Free Diffusion
Guidance"), and the labels a conditional model is sampled with.

:func:`guided` wraps a class-conditional network ``net(x, t, y)`` into the two-argument ``model(x, t)`` every
sampler of :mod:`~diffusion_curriculum.generate` calls, so DDPM, DDIM, EDM's Heun and the flow Euler / Heun
samplers all guide without a line of their own. The guided output is

    out = out(x, ∅) + w · (out(x, y) − out(x, ∅))

with ∅ the null class the network was trained on by label dropout: Ho & Salimans' eq. 6,
ε̃ = (1 + w′) ε(x, y) − w′ ε(x, ∅), written with the scale w = 1 + w′ (as Imagen and Stable Diffusion do), so
w = 1 is the plain conditional prediction and w = 0 the unconditional one. The combination is linear in the
network's output, and every prediction type the processes know (ε, v, x0, EDM's F) is affine in it for fixed
(x, t), so guiding the raw output is guiding ε̂, v̂, x̂0 and D alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .checks import check_value, is_int, is_number

__all__ = ["Guided", "balanced_labels", "guided", "parse_labels", "run_labels", "spread_labels"]


class Guided:
    """``model(x, t)`` of a class-conditional ``net(x, t, y)`` with labels ``labels`` [B] at guidance scale
    ``guidance`` (see the module docstring). w = 1 calls ``net`` once on the labels and w = 0 once on the null
    class; any other w makes one batched forward of both branches (the batch concatenated with itself, labels
    then null class) and splits the output — one network call per sampler evaluation, as in the paper's
    Algorithm 2."""

    def __init__(self, net, labels: Tensor, guidance: float, null_class: int):
        self.net, self.labels, self.guidance, self.null_class = net, labels, float(guidance), int(null_class)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        y = self.labels.to(x.device)
        null = torch.full_like(y, self.null_class)
        if self.guidance == 1.0:
            return self.net(x, t, y)
        if self.guidance == 0.0:
            return self.net(x, t, null)
        t2 = torch.cat([t, t]) if torch.as_tensor(t).ndim else t
        cond, uncond = self.net(torch.cat([x, x]), t2, torch.cat([y, null])).chunk(2)
        return uncond + self.guidance * (cond - uncond)


def guided(
    net, labels: Tensor | Sequence[int], guidance: float = 1.0, null_class: int | None = None
) -> Guided:
    """The guided two-argument model of ``net`` for ``labels`` (checked to lie in ``0 .. null_class − 1``;
    ``null_class`` defaults to ``net.null_class``, the ``num_classes`` the library's models are built with) at
    scale ``guidance`` (a number >= 0). Each problem is a ``ValueError`` in one sentence."""
    null_class = getattr(net, "null_class", None) if null_class is None else null_class
    if not is_int(null_class):
        raise ValueError(
            "labels were given but the model is not class-conditional (no null_class); train it with "
            "cond.enabled=true, or pass null_class="
        )
    check_value("guidance", guidance, is_number(guidance) and guidance >= 0, "a finite number >= 0")
    y = torch.as_tensor(labels)
    if y.ndim != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"labels must be a list of class indices, got shape {tuple(y.shape)} of {y.dtype}")
    bad = y[(y < 0) | (y >= null_class)]
    if bad.numel():
        raise ValueError(
            f"label {int(bad[0])} is outside the model's {null_class} classes; allowed: 0 to {null_class - 1}"
        )
    return Guided(net, y.long(), guidance, null_class)


def spread_labels(classes: Sequence[int] | Tensor, n: int) -> Tensor:
    """``n`` labels that cover ``classes`` in order, in contiguous blocks whose sizes differ by at most one (a
    grid shows each class together): label i is ``classes[i · len(classes) // n]`` [reconstruction]."""
    c = torch.as_tensor(classes, dtype=torch.long).flatten()
    check_value("n", n, is_int(n) and n >= 1, "a positive integer")
    if c.numel() == 0:
        raise ValueError("no classes to sample were given; name at least one label")
    return c[torch.arange(n) * c.numel() // n]


def balanced_labels(n: int, num_classes: int) -> Tensor:
    """``n`` class-balanced labels over ``0 .. num_classes − 1`` (:func:`spread_labels` of every class): what a
    conditional run's evaluation, ``sample --labels all`` and ``evaluate`` generate, so FD and ``accuracy``
    are measured on every class alike."""
    return spread_labels(torch.arange(num_classes), n)


def parse_labels(
    text: str, num_classes: int | None, n: int, class_names: Sequence[str] | None = None
) -> Tensor:
    """The ``n`` labels ``sample --labels`` asks for: ``all`` (:func:`balanced_labels`) or comma-separated classes
    (spread over the ``n`` samples), each an index such as ``7`` or one of ``class_names`` (the names the run
    announced, e.g. a folder's ``square``); a ``ValueError`` in one sentence for an unconditional run
    (``num_classes`` ``None``), a word that is neither an index nor a name, or an index outside the classes."""
    if num_classes is None:
        raise ValueError(
            "--labels applies only to a class-conditional run, and this one was trained without conditioning "
            "(cond.enabled=false)"
        )
    if text.strip() == "all":
        return balanced_labels(n, num_classes)
    names = {name: i for i, name in enumerate(class_names or ())}
    items = [s.strip() for s in text.split(",") if s.strip()]
    items = [str(names[s]) if s in names and not s.isdigit() else s for s in items]
    if not items or not all(s.isdigit() for s in items):
        named = f", or class names ({', '.join(list(names)[:10])})" if names else ""
        raise ValueError(f"--labels {text!r} is invalid; allowed: all, class indices such as 0,1,7{named}")
    bad = [int(s) for s in items if int(s) >= num_classes]
    if bad:
        raise ValueError(
            f"--labels: class {bad[0]} is outside the run's {num_classes} classes; allowed: 0 to {num_classes - 1}"
        )
    if len(items) > n:  # spread_labels would leave the last classes out without a word
        raise ValueError(
            f"--labels {text!r} names {len(items)} classes but only {n} samples are drawn; use --n {len(items)} "
            "or more, or name fewer classes"
        )
    return spread_labels([int(s) for s in items], n)


def run_labels(
    num_classes: int | None,
    n: int,
    text: str | None,
    guidance: float | None,
    default_guidance: float,
    class_names: Sequence[str] | None = None,
) -> dict:
    """The ``labels`` / ``guidance`` keywords of :func:`~diffusion_curriculum.generate.sample` for ``n`` samples
    of a run with ``num_classes`` classes (``None``: unconditional), as ``sample --labels TEXT --guidance W``
    and ``evaluate --guidance W`` ask for them: a conditional run draws ``text`` (:func:`parse_labels`;
    ``None``: every class, balanced) at ``guidance`` (``None``: ``default_guidance``, the run's
    ``eval.guidance``); an unconditional run takes neither (``{}``), and either given is a ``ValueError`` in
    one sentence."""
    if num_classes is None and guidance is not None:
        raise ValueError(
            f"--guidance {guidance:g} applies only to a class-conditional run, and this one was trained "
            "without conditioning (cond.enabled=false)"
        )
    if num_classes is None and text is None:
        return {}
    check_value(
        "--guidance", guidance, guidance is None or (is_number(guidance) and guidance >= 0), "a number >= 0"
    )
    labels = parse_labels("all" if text is None else text, num_classes, n, class_names)
    return {"labels": labels, "guidance": default_guidance if guidance is None else float(guidance)}
