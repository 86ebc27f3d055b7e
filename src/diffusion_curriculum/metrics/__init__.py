"""Sample-quality metrics: Fréchet distance on the library's own feature nets, Inception FID from a local
weights file, improved precision/recall, and distances for low-dimensional point data.

* :mod:`.frechet` — the Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017).
* :mod:`.feature_nets` — the small classifier / autoencoder the library trains on the dataset itself (no
  download) to give features for that distance, and their disk cache.
* :mod:`.inception` — the FID Inception-v3, for numbers comparable with papers (weights from a local file).
* :mod:`.precision_recall` — improved precision and recall (Kynkäänniemi et al. 2019).
* :mod:`.points` — sliced Wasserstein distance and MMD for point data such as the toy 2-D sets.
* :mod:`.evaluator` — :class:`Evaluator`, the metrics of a training run: built once from the training dataset,
  then called on each batch of generated samples.

Every public name of these modules is importable from ``diffusion_curriculum.metrics`` itself.
"""

from __future__ import annotations

from . import feature_nets, inception
from .evaluator import EVAL_SEED_OFFSET, Evaluator, ImageEvaluator, PointEvaluator
from .feature_nets import (
    AUTOENCODER_DEFAULTS,
    CACHE_ENV,
    CLASSIFIER_DEFAULTS,
    FEATURE_NET_VERSION,
    AutoEncoder,
    FeatureNet,
    extract_features,
    feature_net,
    train_feature_net,
)
from .frechet import fd_from_stats, frechet_distance, gaussian_stats
from .inception import FIDInceptionV3, inception_features, inception_fid, load_inception
from .points import check_bandwidths, kernel_sum, mmd, mmd_from_sums, sliced_wasserstein
from .precision_recall import knn_radii, precision_recall

__all__ = [
    "AUTOENCODER_DEFAULTS",
    "CACHE_ENV",
    "CLASSIFIER_DEFAULTS",
    "EVAL_SEED_OFFSET",
    "FEATURE_NET_VERSION",
    "AutoEncoder",
    "Evaluator",
    "FIDInceptionV3",
    "FeatureNet",
    "ImageEvaluator",
    "PointEvaluator",
    "check_bandwidths",
    "clear_memo",
    "extract_features",
    "fd_from_stats",
    "feature_net",
    "frechet_distance",
    "gaussian_stats",
    "inception_features",
    "inception_fid",
    "kernel_sum",
    "knn_radii",
    "load_inception",
    "mmd",
    "mmd_from_sums",
    "precision_recall",
    "sliced_wasserstein",
    "train_feature_net",
]


def clear_memo() -> None:
    """Forget the feature nets and Inception networks kept in memory by this process (the disk cache stays)."""
    feature_nets.clear_memo()
    inception.clear_memo()
