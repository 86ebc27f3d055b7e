"""Metrics of generated samples against one dataset, for a training run or an offline evaluation.

An evaluator is built once from the training dataset — everything about the real data (features, k-NN radii,
Gaussian statistics, kernel sums) is computed then — and called on each batch of generated samples.
``Evaluator(dataset, ...)`` gives an :class:`ImageEvaluator` or a :class:`PointEvaluator` by the dataset's kind;
each class computes only its own metrics.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import check_value, is_int
from ..data import Dataset, fresh_points
from .feature_nets import extract_features, feature_net
from .frechet import fd_from_stats, frechet_distance, gaussian_stats
from .inception import FIDInceptionV3, inception_features, load_inception
from .points import check_bandwidths, kernel_sum, mmd_from_sums, sliced_wasserstein
from .precision_recall import knn_radii, precision_recall

__all__ = ["EVAL_SEED_OFFSET", "Evaluator", "ImageEvaluator", "PointEvaluator"]

#: Seed offset of the fresh toy points a :class:`PointEvaluator` compares against (never the training draw).
EVAL_SEED_OFFSET = 1_000_003

_IMAGE_OPTIONS = ("cache_dir", "inception_weights", "k", "device", "feature_settings", "on_train")
_POINT_OPTIONS = ("bandwidths", "n_projections")


class Evaluator:
    """Metrics of generated samples against one dataset, with everything about the real data precomputed.

    ``Evaluator(dataset, *, seed=0, n_real=None, **options)`` returns an :class:`ImageEvaluator` when
    ``dataset.kind == "image"``, else a :class:`PointEvaluator`; see those for the metrics and options. Both
    accept every option, and ignore the other kind's ones, so one call serves any dataset (the trainer passes
    ``inception_weights`` and ``device`` whatever the data). ``n_real`` caps the real samples used (a random
    subset drawn with ``seed``; default: all). Called on samples (``[N, *dataset.shape]``, N ≥ 2) it returns
    ``{name: value}`` for the names in :attr:`keys`; samples with NaN or infinite values give NaN for all.
    """

    keys: tuple[str, ...] = ()

    def __new__(cls, dataset: Dataset, **options: Any):
        if cls is Evaluator:
            cls = ImageEvaluator if dataset.kind == "image" else PointEvaluator
        return super().__new__(cls)

    def __init__(self, dataset: Dataset, *, seed: int = 0, n_real: int | None = None, **options: Any):
        unknown = sorted(set(options) - set(_IMAGE_OPTIONS) - set(_POINT_OPTIONS))
        if unknown:
            raise TypeError(f"Evaluator got unexpected keyword argument(s) {', '.join(map(repr, unknown))}")
        check_value(
            "n_real", n_real, n_real is None or (is_int(n_real) and n_real >= 2), "an integer >= 2 or None"
        )
        self.kind = dataset.kind
        self.shape = dataset.shape
        self.seed = int(seed)
        self.n_real = n_real

    def _real_subset(self, dataset: Dataset) -> Tensor:
        """The dataset's samples, or ``n_real`` of them drawn with ``seed`` when it has more."""
        if self.n_real is not None and self.n_real < len(dataset):
            g = torch.Generator().manual_seed(self.seed)
            return dataset.rows(torch.randperm(len(dataset), generator=g)[: self.n_real])
        return dataset.data

    def __call__(self, samples: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        """The metrics of ``samples`` (shaped ``[N, *dataset.shape]``), NaN for all when any value is not finite.
        With ``labels`` (the class each sample was asked for, of a class-conditional model) also ``accuracy``
        (:meth:`accuracy`)."""
        x = torch.as_tensor(samples).detach().float()  # where they are: image features are computed there
        if tuple(x.shape[1:]) != tuple(self.shape) or x.shape[0] < 2:
            raise ValueError(
                f"samples have shape {tuple(x.shape)}, but this evaluator needs at least 2 samples of shape "
                f"{tuple(self.shape)}"
            )
        if labels is not None and tuple(torch.as_tensor(labels).shape) != (x.shape[0],):
            raise ValueError(
                f"labels have shape {tuple(torch.as_tensor(labels).shape)}; give one label per sample "
                f"({x.shape[0]})"
            )
        keys = (*self.keys, "accuracy") if labels is not None else self.keys
        if not torch.isfinite(x).all():
            return {k: float("nan") for k in keys}
        out = self._measure(x)
        if labels is not None:
            out["accuracy"] = self.accuracy(x, torch.as_tensor(labels))
        return out

    def _measure(self, x: Tensor) -> dict[str, float]:
        raise NotImplementedError

    @property
    def has_accuracy(self) -> bool:
        """Whether :meth:`accuracy` can be measured: labelled image data only (its feature net is a classifier)."""
        return False

    def accuracy(self, x: Tensor, labels: Tensor) -> float:
        """How often the library's classifier recognises the requested class ``labels`` in samples ``x``."""
        raise ValueError(
            f"accuracy needs the classifier of a labelled image dataset; {self.kind} data has none"
        )


class ImageEvaluator(Evaluator):
    """``fd``, ``precision``, ``recall``, (with ``inception_weights``) ``fid`` and (called with labels)
    ``accuracy`` of generated images.

    ``fd`` is the Fréchet distance on the features of :func:`~diffusion_curriculum.metrics.feature_net` — the
    classifier when the dataset has labels, else the autoencoder; which one is in :attr:`fd_features`.
    ``precision`` and ``recall`` are Kynkäänniemi et al. 2019's with ``k`` neighbours on the same features.
    ``fid`` is the Inception-v3 FID (:func:`~diffusion_curriculum.metrics.inception_fid`'s network); it and the
    feature net run on ``device`` (the features come back to the host: the statistics are float64 on the CPU).
    ``feature_settings`` override the feature net's training settings (e.g. ``{"steps": 2000}``); ``cache_dir``
    is its disk cache; ``on_train()`` is called just before the feature net is trained (not when it comes from
    the cache), for a caller that announces the wait.
    Images are clamped to [-1, 1] first.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        seed: int = 0,
        n_real: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        inception_weights: str | os.PathLike | None = None,
        k: int = 3,
        device: str | torch.device = "cpu",
        feature_settings: dict[str, Any] | None = None,
        on_train: Callable[[], None] | None = None,
        **point_options: Any,
    ):
        super().__init__(dataset, seed=seed, n_real=n_real, **point_options)
        self.k = int(k)
        self.device = torch.device(device)
        net = feature_net(
            dataset, seed=seed, cache_dir=cache_dir, on_train=on_train, **(feature_settings or {})
        )
        if self.device.type != "cpu":  # a copy: the net is memoised, shared by every evaluator of the dataset
            net = copy.deepcopy(net).to(self.device)
        self.feature_net: nn.Module = net
        self.fd_features: str = self.feature_net.kind
        self.inception: FIDInceptionV3 | None = None
        real = self._real_subset(dataset)
        self.real_images = real
        self.real_features = extract_features(self.feature_net, real)
        if self.real_features.shape[0] <= self.k:
            raise ValueError(f"precision/recall with k={self.k} need more than {self.k} real images")
        self.real_radii = knn_radii(self.real_features, self.k)
        self._real_stats = gaussian_stats(self.real_features.double().numpy())
        self.keys = ("fd", "precision", "recall")
        if inception_weights is not None:
            self.inception = load_inception(inception_weights, self.device)
            self.real_inception = inception_features(real, self.inception, device=self.device)
            self.keys = (*self.keys, "fid")

    def _measure(self, x: Tensor) -> dict[str, float]:
        x = x.clamp(-1, 1)
        feats = extract_features(self.feature_net, x)
        # enough samples on both sides for full-rank covariances: reuse the real side's precomputed statistics
        if feats.shape[0] >= feats.shape[1] and self.real_features.shape[0] >= feats.shape[1]:
            out = {"fd": fd_from_stats(*gaussian_stats(feats.double().numpy()), *self._real_stats)}
        else:
            out = {"fd": frechet_distance(feats, self.real_features)}
        if x.shape[0] > self.k:
            precision, recall = precision_recall(
                self.real_features, feats, k=self.k, real_radii=self.real_radii
            )
        else:
            precision = recall = float("nan")
        out["precision"], out["recall"] = precision, recall
        if self.inception is not None:
            fake_inception = inception_features(x, self.inception, device=self.device)
            out["fid"] = frechet_distance(fake_inception, self.real_inception)
        return out

    @property
    def has_accuracy(self) -> bool:
        """Whether :meth:`accuracy` can be measured: the feature net is the classifier of a labelled dataset."""
        return self.fd_features == "classifier"

    def accuracy(self, x: Tensor, labels: Tensor) -> float:
        """The fraction of generated images ``x`` whose class the feature net — the classifier trained on the
        dataset's labels that FD uses (:func:`~diffusion_curriculum.metrics.feature_net`) — predicts as the one
        requested in ``labels``: how well a class-conditional model follows its labels (the classifier-based
        check of Ho & Salimans 2022's guided samples, with the library's classifier in place of Inception)
        [reconstruction]. A ``ValueError`` when the feature net is the autoencoder (a dataset without labels)."""
        if self.fd_features != "classifier":
            raise ValueError("accuracy needs labelled image data (the feature net is a classifier only then)")
        param = next(self.feature_net.parameters())
        with torch.no_grad():
            logits = torch.cat([self.feature_net(c.to(param.device)) for c in x.clamp(-1, 1).split(1024)])
        return float((logits.argmax(1).cpu() == labels.cpu().long()).float().mean())


class PointEvaluator(Evaluator):
    """``swd`` (sliced 2-Wasserstein, ``n_projections`` directions) and ``mmd`` (unbiased MMD², RBF
    ``bandwidths``) of generated points against fresh real points.

    For a synthetic dataset (the toy 2-D sets) the real points are a new draw of ``n_real`` (default 5000)
    with seed ``seed + EVAL_SEED_OFFSET`` — never the training draw; for other point data, the dataset itself.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        seed: int = 0,
        n_real: int | None = None,
        bandwidths: tuple[float, ...] = (0.1, 0.5, 1, 2, 5),
        n_projections: int = 256,
        **image_options: Any,
    ):
        super().__init__(dataset, seed=seed, n_real=n_real, **image_options)
        self.bandwidths = check_bandwidths(bandwidths)
        self.n_projections = int(n_projections)
        real = fresh_points(dataset, n_real or 5000, seed=self.seed + EVAL_SEED_OFFSET)
        if real is None:
            real = self._real_subset(dataset)
        self.real_points = real.to(torch.float64)
        self._kyy = kernel_sum(self.real_points, self.real_points, self.bandwidths)
        self.keys = ("swd", "mmd")

    def _measure(self, x: Tensor) -> dict[str, float]:
        pts = x.to("cpu", torch.float64)
        kxx = kernel_sum(pts, pts, self.bandwidths)
        kxy = kernel_sum(pts, self.real_points, self.bandwidths)
        n_real, n_kernels = self.real_points.shape[0], len(self.bandwidths)
        return {
            "swd": sliced_wasserstein(pts, self.real_points, self.n_projections, seed=self.seed),
            "mmd": mmd_from_sums(kxx, self._kyy, kxy, pts.shape[0], n_real, n_kernels),
        }
