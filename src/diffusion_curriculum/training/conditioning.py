"""Class-conditional training (the config's ``cond`` section): the number of classes a model is built with, and
label dropout with its own random stream.

Classifier-free guidance needs one network that predicts both conditionally and unconditionally; it is trained
by replacing each label with the null class (index ``num_classes``) with probability ``cond.drop_prob``
(Ho & Salimans 2022, Algorithm 1, p_uncond; DiT's ``LabelEmbedder`` drops labels with probability 0.1, Peebles &
Xie 2023, App. A). The drops come from a generator of their own, seeded from the run seed per rank, so the data,
timestep and noise streams of a conditional run are those of the same unconditional run, and an unconditional
run draws nothing new at all. Sampling with guidance is :mod:`diffusion_curriculum.guidance`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import data
from ..device import to_device
from ..errors import ConfigError
from ..guidance import balanced_labels

__all__ = ["LabelDropout", "build", "eval_labels", "num_classes_for"]


def num_classes_for(cfg: dict, dataset: data.Dataset) -> int | None:
    """The ``num_classes`` the model is built with: the dataset's with ``cond.enabled``, else ``None``
    (unconditional, whatever labels the dataset has). A ConfigError in one sentence for conditioning on a
    dataset without labels (or with a single class), for ``model.num_classes`` set by hand, and for
    ``eval.guidance`` other than 1 on an unconditional run."""
    cond = cfg.get("cond") or {}
    if "num_classes" in cfg["model"]:
        raise ConfigError(
            f"model.num_classes={cfg['model']['num_classes']!r} cannot be set: the class count comes from the "
            "dataset when cond.enabled=true; drop model.num_classes"
        )
    if not cond.get("enabled", False):
        if cfg["eval"].get("guidance", 1.0) != 1.0:
            raise ConfigError(
                f"eval.guidance={cfg['eval']['guidance']!r} applies only to a class-conditional run; set "
                "cond.enabled=true, or leave eval.guidance at 1"
            )
        return None
    k = dataset.num_classes
    if k is None or k < 2:
        what = "has no labels" if k is None else "has a single class"
        raise ConfigError(
            f"cond.enabled=true needs a labelled dataset with at least two classes, but dataset "
            f"{dataset.name!r} {what}; use digits, mnist5k, an npz with 'labels' or a folder with one "
            "sub-folder per class, or set cond.enabled=false"
        )
    return k


class LabelDropout:
    """Replace each label by the null class ``num_classes`` with probability ``drop_prob``, drawing from a CPU
    generator seeded with ``seed`` (one uniform number per label, every step, whatever ``drop_prob``), so the
    drops do not depend on the device; a resumable part (``state_dict`` / ``load_state_dict``)."""

    def __init__(self, num_classes: int, drop_prob: float, seed: int):
        self.num_classes, self.drop_prob = int(num_classes), float(drop_prob)
        self.generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, labels: Tensor) -> Tensor:
        """``labels`` with the dropped ones set to the null class."""
        drop = torch.rand(labels.shape, generator=self.generator, device="cpu") < self.drop_prob
        return torch.where(to_device(drop, labels.device), self.num_classes, labels)

    def state_dict(self) -> dict[str, Any]:
        """The generator's state."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the generator from a :meth:`state_dict`."""
        self.generator.set_state(torch.as_tensor(state["generator"]).to(dtype=torch.uint8))


def build(cfg: dict, num_classes: int | None, seed: int, rank: int = 0) -> LabelDropout | None:
    """The :class:`LabelDropout` of rank ``rank`` of a run with seed ``seed`` (``cond.drop_prob``; the stream
    ``"labels"`` of :func:`~.components.stream_seed`), or ``None`` when the run is unconditional (``num_classes``
    ``None``): nothing is drawn then."""
    if num_classes is None:
        return None
    from .components import stream_seed

    return LabelDropout(num_classes, cfg["cond"]["drop_prob"], stream_seed(seed, "labels", rank))


def eval_labels(num_classes: LabelDropout | int | None, n: int, guidance: float = 1.0) -> dict[str, Any]:
    """The keywords of :func:`~diffusion_curriculum.generate.sample` that make a conditional run's ``n``
    evaluation samples class-balanced (:func:`~diffusion_curriculum.guidance.balanced_labels`) and guided at
    ``guidance`` (the run's ``eval.guidance``): ``{"labels", "guidance"}``, or ``{}`` for an unconditional run
    (``None``). ``num_classes`` is the class count or the run's :class:`LabelDropout`."""
    if num_classes is None:
        return {}
    k = num_classes.num_classes if isinstance(num_classes, LabelDropout) else int(num_classes)
    return {"labels": balanced_labels(n, k), "guidance": guidance}
