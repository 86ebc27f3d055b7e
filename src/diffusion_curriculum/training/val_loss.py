"""The trainer's per-noise-level validation loss: the fixed set of :mod:`~diffusion_curriculum.validation`, scored
at every evaluation, with the excess over the training set's optimal loss where that is known.

The set is built once, on the first evaluation, from ``eval.seed`` (``eval.val_buckets`` buckets of
``eval.val_per_bucket`` entries) and kept on the training device. The optimal loss J* per bucket
(:mod:`~diffusion_curriculum.optimal_loss`) is computed once per run when the set is drawn from the training data
and the dataset is small enough (:data:`~diffusion_curriculum.optimal_loss.MAX_WORK`), cached in the run directory
as ``val_floor.json`` under a fingerprint of the data, the set and the process (a resume reads it back); otherwise
the run says once why there is no excess loss. Everything is drawn from its own CPU generator: the training's
random streams, and so the run's other numbers, are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from .. import optimal_loss, validation
from ..data import Dataset
from ..loss import DenoisingLoss

__all__ = ["FLOOR_FILE", "Validator"]

#: the run directory's cache of the optimal loss per bucket
FLOOR_FILE = "val_floor.json"


class Validator:
    """Scores a model on a run's validation set: ``validator(net)`` is the evaluation record's ``val_*`` keys
    (:func:`~diffusion_curriculum.validation.record`, plus ``val_on``), ``{}`` when ``eval.val_per_bucket`` is 0.
    ``conditional``: the model takes class labels (the entries' own)."""

    def __init__(
        self,
        eval_cfg: dict[str, Any],
        dataset: Dataset,
        loss: DenoisingLoss,
        device,
        out: Path,
        *,
        conditional: bool = False,
        say: Callable[[str], None] = print,
    ):
        self.cfg, self.dataset, self.loss, self.device = eval_cfg, dataset, loss, device
        self.out, self.conditional, self.say = Path(out), conditional, say
        self.vset: validation.ValidationSet | None = None
        self.floor: list[float] | None = None

    def _prepare(self) -> validation.ValidationSet:
        c = self.cfg
        vset = validation.build(
            self.dataset,
            self.loss.process,
            buckets=c["val_buckets"],
            per_bucket=c["val_per_bucket"],
            seed=c["seed"],
        )
        self.floor = self._floor(vset)
        self.vset = vset.to(self.device)
        return self.vset

    def _floor(self, vset: validation.ValidationSet) -> list[float] | None:
        if vset.on != "train":
            return None  # the memorising optimum bounds nothing on held-out samples
        labels = self.dataset.labels if self.conditional else None
        try:
            return optimal_loss.cached_floor(
                self.out / FLOOR_FILE,
                self.loss.process,
                self.loss.prediction,
                self.dataset.data,
                vset,
                labels,
            )
        except optimal_loss.OptimalLossError as e:
            self.say(f"note: no excess loss in this run: {e}")
            return None

    def __call__(self, net: nn.Module) -> dict[str, Any]:
        if not self.cfg["val_per_bucket"]:
            return {}
        vset = self.vset or self._prepare()
        pred, x0 = validation.scores(
            self.loss, net, vset, batch_size=self.cfg["batch_size"], conditional=self.conditional
        )
        rec: dict[str, Any] = {"val_on": vset.on}
        means = [validation.bucket_means(v, vset) for v in (pred, x0)]
        return rec | validation.record(*means, self.floor)
