"""Sample-quality metrics: Fréchet distance on the library's own feature nets, Inception FID from a local
weights file, improved precision/recall, and distances for low-dimensional point data.

* **Fréchet distance** (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local
  Nash Equilibrium", the FID formula): ``FD = ‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½)`` between Gaussians
  fitted to two feature sets (:func:`frechet_distance`). The features come from a small net this library
  trains on the dataset itself (no download): a CNN classifier (:class:`FeatureNet`) when the dataset has
  labels, else a convolutional autoencoder (:class:`AutoEncoder`) whose bottleneck is the feature vector.
  Both are trained deterministically from a seed (:func:`train_feature_net`) and cached on disk as
  safetensors + JSON, keyed by a hash of the data, the labels and every setting (:func:`feature_net`).
* **Inception FID** (:func:`inception_fid`): the standard FID network ("pt_inception-2015-12-05", as used by
  pytorch-fid and torch-fidelity), implemented here (:class:`FIDInceptionV3`) because torch-fidelity (and
  torchmetrics' FID, which wraps it) imports torchvision. The weights are read from a local file only.
* **Precision and recall** (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for Assessing
  Generative Models", §2: the k-NN manifold f(φ, Φ) and the precision/recall formulas) on real and
  generated features (:func:`precision_recall`).
* **Points**: sliced Wasserstein distance (Bonneel et al. 2015, "Sliced and Radon Wasserstein Barycenters of
  Measures"; Deshpande et al. 2018, "Generative Modeling using the Sliced Wasserstein Distance",
  :func:`sliced_wasserstein`) and the unbiased squared MMD with a sum of RBF kernels (Gretton et al. 2012,
  "A Kernel Two-Sample Test", Lemma 6 / Eq. 3, :func:`mmd`).

:class:`Evaluator` bundles them for a training run: built once from the training dataset (real features,
radii and kernel sums are computed at construction), then called on each batch of generated samples.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .data import TOY_DATASETS, Dataset, toy_points

__all__ = [
    "AutoEncoder",
    "Evaluator",
    "FIDInceptionV3",
    "FeatureNet",
    "clear_memo",
    "extract_features",
    "feature_net",
    "frechet_distance",
    "inception_features",
    "inception_fid",
    "knn_radii",
    "load_inception",
    "mmd",
    "precision_recall",
    "sliced_wasserstein",
    "train_feature_net",
]

#: Bumped whenever the feature nets or their training change, so stale cache entries are never reused.
FEATURE_NET_VERSION = 1
#: Default training settings of the feature nets (every one of them is part of the cache key).
CLASSIFIER_DEFAULTS: dict[str, Any] = {
    "steps": 400,
    "batch_size": 128,
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "width": 16,
    "feature_dim": 128,
    "holdout": 0.1,
}
AUTOENCODER_DEFAULTS: dict[str, Any] = {
    "steps": 500,
    "batch_size": 64,
    "lr": 2e-3,
    "weight_decay": 0.0,
    "width": 16,
    "feature_dim": 64,
    "holdout": 0.1,
}
#: Seed offset of the fresh toy points an :class:`Evaluator` compares against (never the training draw).
EVAL_SEED_OFFSET = 1_000_003
#: Where :func:`feature_net` caches trained nets unless told otherwise.
CACHE_ENV = "DIFFUSION_CURRICULUM_CACHE"

_MEMO: dict[str, nn.Module] = {}
_INCEPTION_MEMO: dict[tuple[str, int, int], FIDInceptionV3] = {}


# ------------------------------------------------------------------------------------------------------
# Fréchet distance
# ------------------------------------------------------------------------------------------------------
def _as_float64(x: Tensor | np.ndarray, name: str) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2:
        raise ValueError(f"{name} must be a 2-D array [N, D] with N >= 2, got shape {tuple(a.shape)}")
    return a


def frechet_distance(feat_a: Tensor | np.ndarray, feat_b: Tensor | np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N, D]`` and ``[M, D]``.

    Heusel et al. 2017 (the FID formula): ``FD = ‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½)``, with means and
    (unbiased, ``N − 1``) covariances in float64. The matrix square root is ``scipy.linalg.sqrtm``:

    * when both sets have at least ``D`` samples, ``sqrtm(Σa Σb)`` as in pytorch-fid; if the product is
      singular (the result is not finite) or the root has an imaginary part above ``1e-3`` (rounding on a
      nearly singular product), it is recomputed with ``eps·I`` added to both covariances, the usual fix;
      the real part is then taken (the eigenvalues of ``Σa Σb`` are real and ≥ 0, so any imaginary part is
      rounding error);
    * when a set has fewer samples than dimensions (e.g. a few images on 2048-d Inception features), the
      covariances are low rank; with centred features ``A`` (``[N, D]``) and ``B``, the non-zero eigenvalues
      of ``Σa Σb`` are those of ``K Kᵀ`` with ``K = A Bᵀ / √((N−1)(M−1))`` (an ``N x M`` matrix), so
      ``Tr (Σa Σb)^½ = Tr sqrtm(K Kᵀ)`` exactly — smaller, and free of the singular ``D x D`` product.
    """
    a, b = _as_float64(feat_a, "feat_a"), _as_float64(feat_b, "feat_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: feat_a has {a.shape[1]}, feat_b has {b.shape[1]}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    n, m, d = a.shape[0], b.shape[0], a.shape[1]
    if min(n, m) >= d:
        return _fd_from_stats(*_gaussian(a), *_gaussian(b), eps=eps)
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = a - mu_a, b - mu_b
    trace_a = float((ca * ca).sum() / (n - 1))
    trace_b = float((cb * cb).sum() / (m - 1))
    k = (ca @ cb.T) / math.sqrt((n - 1) * (m - 1))
    diff = mu_a - mu_b
    return float(diff @ diff + trace_a + trace_b - 2.0 * _trace_sqrtm(k @ k.T))


def _gaussian(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of float64 features ``[N, D]``."""
    mu = a.mean(0)
    c = a - mu
    return mu, (c.T @ c) / (a.shape[0] - 1)


def _fd_from_stats(
    mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray, eps: float = 1e-6
) -> float:
    """Heusel et al. 2017's FID formula from means and covariances (``sqrtm(Σa Σb)``, ``eps·I`` retry)."""
    covmean = _sqrtm(sigma_a @ sigma_b)
    if covmean is None:
        offset = eps * np.eye(len(mu_a))
        covmean = _sqrtm((sigma_a + offset) @ (sigma_b + offset), force=True)
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.trace(covmean))


def _sqrtm(mat: np.ndarray, force: bool = False) -> np.ndarray | None:
    """Real part of ``sqrtm(mat)``; ``None`` when it is unusable (non-finite, large imaginary part)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on singular input; we check the result instead
        root = scipy.linalg.sqrtm(mat)
    root = np.asarray(root)
    if not np.isfinite(root).all():
        if force:
            raise ValueError("the covariance product has no finite square root even with an eps offset")
        return None
    if np.iscomplexobj(root):
        if np.abs(root.imag).max() > 1e-3 and not force:
            return None
        root = root.real
    return root


def _trace_sqrtm(mat: np.ndarray) -> float:
    root = _sqrtm(mat)
    if root is None:
        root = _sqrtm(mat + 1e-10 * np.trace(mat) / len(mat) * np.eye(len(mat)), force=True)
    return float(np.trace(root))


# ------------------------------------------------------------------------------------------------------
# The library's own feature nets
# ------------------------------------------------------------------------------------------------------
def _check_image_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"feature nets need images [C, H, W], got a sample shape {tuple(shape)}")
    c, h, w = (int(s) for s in shape)
    if h < 4 or w < 4:
        raise ValueError(f"feature nets need images of at least 4x4 pixels, got {h}x{w}")
    return c, h, w


class FeatureNet(nn.Module):
    """A small CNN classifier; its penultimate layer (``feature_dim`` units after ReLU) gives the features.

    Two conv blocks (3x3 convs, ReLU, a 2x2 max-pool after the first), an adaptive average pool to 4x4 (so
    8x8, 28x28, 32x32 or any other size works, with any channel count), a linear layer to ``feature_dim``
    units, and the class logits.
    """

    kind = "classifier"

    def __init__(self, in_shape: tuple[int, ...], n_classes: int, width: int = 32, feature_dim: int = 128):
        super().__init__()
        c, _, _ = _check_image_shape(in_shape)
        self.config = {
            "in_shape": [int(s) for s in in_shape],
            "n_classes": int(n_classes),
            "width": int(width),
            "feature_dim": int(feature_dim),
        }
        self.feature_dim = int(feature_dim)
        w = int(width)
        self.body = nn.Sequential(
            nn.Conv2d(c, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(2 * w * 16, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, n_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations ``[N, feature_dim]`` of images ``[N, C, H, W]`` in [-1, 1]."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class AutoEncoder(nn.Module):
    """A small convolutional autoencoder for unlabelled images; the ``feature_dim`` bottleneck is the feature.

    Encoder: two 3x3 conv layers (the second with stride 2), adaptive average pool to 4x4, a linear
    bottleneck. Decoder: linear to ``2·width x 4 x 4``, bilinear upsampling to half and then full size with a
    3x3 conv after each, ``tanh`` output in [-1, 1]. Trained with the mean squared reconstruction error.
    """

    kind = "autoencoder"

    def __init__(self, in_shape: tuple[int, ...], width: int = 32, feature_dim: int = 64):
        super().__init__()
        c, h, w_ = _check_image_shape(in_shape)
        self.config = {
            "in_shape": [int(s) for s in in_shape],
            "width": int(width),
            "feature_dim": int(feature_dim),
        }
        self.feature_dim = int(feature_dim)
        self._hw = (h, w_)
        w = int(width)
        self.encoder = nn.Sequential(
            nn.Conv2d(c, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(2 * w * 16, feature_dim),
        )
        self.expand = nn.Linear(feature_dim, 2 * w * 16)
        self.up1 = nn.Conv2d(2 * w, w, 3, padding=1)
        self.up2 = nn.Conv2d(w, c, 3, padding=1)

    def features(self, x: Tensor) -> Tensor:
        """Bottleneck codes ``[N, feature_dim]`` of images ``[N, C, H, W]`` in [-1, 1]."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """Reconstruct images from the bottleneck features ``z`` (the autoencoder's decoder half)."""
        h, w = self._hw
        y = F.relu(self.expand(z)).view(z.shape[0], -1, 4, 4)
        y = F.interpolate(
            y, size=(max(1, (h + 1) // 2), max(1, (w + 1) // 2)), mode="bilinear", align_corners=False
        )
        y = F.relu(self.up1(y))
        y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
        return torch.tanh(self.up2(y))

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encoder(x))


def _init_weights(module: nn.Module, g: torch.Generator) -> None:
    """He-normal weights (fan-in, ReLU gain) drawn from ``g``, zero biases: a deterministic initialisation."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=g)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _feature_kind(dataset: Dataset, kind: str | None) -> str:
    if dataset.kind != "image":
        raise ValueError(
            f"feature nets work on images, but dataset {dataset.name!r} holds {dataset.kind}; use "
            "sliced_wasserstein / mmd for points"
        )
    if kind is None:
        labels = dataset.labels
        has_classes = labels is not None and labels.numel() > 0 and int(labels.unique().numel()) >= 2
        return "classifier" if has_classes else "autoencoder"
    if kind not in ("classifier", "autoencoder"):
        raise ValueError(f"kind={kind!r} is not a feature-net kind; use 'classifier', 'autoencoder' or None")
    if kind == "classifier" and dataset.labels is None:
        raise ValueError(
            f"kind='classifier' needs labels, but dataset {dataset.name!r} has none; use kind=None"
        )
    return kind


def _settings(kind: str, overrides: dict[str, Any]) -> dict[str, Any]:
    defaults = CLASSIFIER_DEFAULTS if kind == "classifier" else AUTOENCODER_DEFAULTS
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown feature-net setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(defaults))}"
        )
    s = {**defaults, **{k: v for k, v in overrides.items() if v is not None}}
    for key in ("steps", "batch_size", "width", "feature_dim"):
        if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 1:
            raise ValueError(f"feature-net setting {key}={s[key]!r} must be a positive integer")
    if not 0.0 <= float(s["holdout"]) < 1.0:
        raise ValueError(f"feature-net setting holdout={s['holdout']!r} must lie in [0, 1)")
    return s


def train_feature_net(
    dataset: Dataset,
    seed: int = 0,
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    *,
    kind: str | None = None,
    **settings: Any,
) -> FeatureNet | AutoEncoder:
    """Train a feature net on ``dataset`` (CPU), deterministically from ``seed``; no caching here.

    :func:`feature_net` is the cached entry point.

    ``kind`` ``None`` picks a :class:`FeatureNet` classifier when the dataset has labels of at least two
    classes, else an :class:`AutoEncoder`. A random ``holdout`` fraction (default 10 %) of the samples is kept
    out of training to measure held-out accuracy (classifier) or reconstruction MSE (autoencoder). One
    ``torch.Generator`` seeded with ``seed`` draws the initial weights, the split and every minibatch; AdamW
    with a cosine learning-rate decay. Gradients are enabled inside even when the caller runs under
    ``torch.no_grad()`` (e.g. an evaluation hook). Other settings (``weight_decay``, ``width``, ``feature_dim``,
    ``holdout``) default to :data:`CLASSIFIER_DEFAULTS` / :data:`AUTOENCODER_DEFAULTS`.

    The returned net is in eval mode and has ``kind``, ``settings``, ``seed``, ``train_seconds`` and
    ``accuracy`` (classifier, held-out) or ``recon_mse`` (autoencoder, held-out) attributes.
    """
    kind = _feature_kind(dataset, kind)
    s = _settings(kind, {"steps": steps, "batch_size": batch_size, "lr": lr, **settings})
    start = time.perf_counter()
    g = torch.Generator().manual_seed(int(seed))
    x = dataset.data.detach().to("cpu", torch.float32).contiguous()
    n = x.shape[0]
    perm = torch.randperm(n, generator=g)
    n_hold = int(round(n * float(s["holdout"])))
    n_hold = min(n_hold, n - 1)
    hold_idx, train_idx = perm[:n_hold], perm[n_hold:]

    if kind == "classifier":
        y = dataset.labels.detach().to("cpu", torch.long)
        if int(y.min()) < 0:
            raise ValueError(f"dataset {dataset.name!r} has negative labels; labels must be 0, 1, 2, ...")
        net: nn.Module = FeatureNet(dataset.shape, int(y.max()) + 1, s["width"], s["feature_dim"])
    else:
        y = None
        net = AutoEncoder(dataset.shape, s["width"], s["feature_dim"])
    _init_weights(net, g)
    opt = torch.optim.AdamW(net.parameters(), lr=float(s["lr"]), weight_decay=float(s["weight_decay"]))
    total = int(s["steps"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total) / total))
    )
    bs = min(int(s["batch_size"]), len(train_idx))
    order, pos = train_idx[torch.randperm(len(train_idx), generator=g)], 0
    net.train()
    with torch.enable_grad():
        for _ in range(total):
            if pos + bs > len(order):
                order, pos = train_idx[torch.randperm(len(train_idx), generator=g)], 0
            idx = order[pos : pos + bs]
            pos += bs
            xb = x[idx]
            if y is not None:
                loss = F.cross_entropy(net(xb), y[idx])
            else:
                loss = F.mse_loss(net(xb), xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval().requires_grad_(False)

    net.kind = kind
    net.settings = dict(s)
    net.seed = int(seed)
    net.accuracy = None
    net.recon_mse = None
    if n_hold > 0:
        with torch.no_grad():
            xh = x[hold_idx]
            if y is not None:
                pred = torch.cat([net(c).argmax(1) for c in xh.split(1024)])
                net.accuracy = float((pred == y[hold_idx]).float().mean())
            else:
                net.recon_mse = float(
                    torch.cat([(net(c) - c).pow(2).flatten(1).mean(1) for c in xh.split(1024)]).mean()
                )
    net.train_seconds = time.perf_counter() - start
    net.source = "trained"
    return net


def _data_key(dataset: Dataset, kind: str, seed: int, settings: dict[str, Any]) -> str:
    """SHA-256 of the data bytes, the labels, the shape and every setting that changes the trained net."""
    h = hashlib.sha256()
    data = dataset.data.detach().to("cpu", torch.float32).contiguous()
    h.update(json.dumps({"shape": list(data.shape), "dtype": "float32"}).encode())
    h.update(data.numpy().tobytes())
    if kind == "classifier" and dataset.labels is not None:
        h.update(dataset.labels.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    meta = {"kind": kind, "seed": int(seed), "version": FEATURE_NET_VERSION, "settings": settings}
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()


def _default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "diffusion_curriculum"


def _build_from_config(kind: str, config: dict[str, Any]) -> FeatureNet | AutoEncoder:
    if kind == "classifier":
        return FeatureNet(
            tuple(config["in_shape"]), config["n_classes"], config["width"], config["feature_dim"]
        )
    return AutoEncoder(tuple(config["in_shape"]), config["width"], config["feature_dim"])


def _load_cached(stem: Path, kind: str, digest: str) -> FeatureNet | AutoEncoder | None:
    tensors_path, meta_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if not (tensors_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != digest:
            raise ValueError("its key does not match the data and settings")
        net = _build_from_config(kind, meta["config"])
        net.load_state_dict(load_file(str(tensors_path)))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
        warnings.warn(
            f"ignoring the unreadable feature-net cache entry {str(stem)!r} ({e}); retraining", stacklevel=3
        )
        return None
    net.eval().requires_grad_(False)
    net.kind = kind
    net.settings = meta.get("settings", {})
    net.seed = meta.get("seed")
    net.accuracy = meta.get("accuracy")
    net.recon_mse = meta.get("recon_mse")
    net.train_seconds = meta.get("train_seconds")
    net.source = "cache"
    return net


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _save_cached(stem: Path, net: FeatureNet | AutoEncoder, digest: str) -> None:
    meta = {
        "format": FEATURE_NET_VERSION,
        "kind": net.kind,
        "key": digest,
        "config": net.config,
        "settings": net.settings,
        "seed": net.seed,
        "accuracy": net.accuracy,
        "recon_mse": net.recon_mse,
        "train_seconds": net.train_seconds,
        "torch": torch.__version__,
    }
    tensors = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        # tensors first, JSON last: an entry counts only when both files exist
        _atomic_write(stem.with_suffix(".safetensors"), lambda p: save_file(tensors, p))
        _atomic_write(stem.with_suffix(".json"), lambda p: Path(p).write_text(json.dumps(meta, indent=1)))
    except OSError as e:
        warnings.warn(
            f"could not cache the feature net under {str(stem.parent)!r} ({e}); continuing", stacklevel=3
        )


def feature_net(
    dataset: Dataset,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    *,
    kind: str | None = None,
    **settings: Any,
) -> FeatureNet | AutoEncoder:
    """A trained feature net for ``dataset``: from this process's memo, else the disk cache, else trained.

    The cache key is the SHA-256 of the data tensor's bytes, the labels, the net kind, ``seed``, every
    training setting (``settings`` override the defaults, see :func:`train_feature_net`) and
    :data:`FEATURE_NET_VERSION`. Entries are ``{cache_dir}/feature_nets/{kind}-{key[:24]}.safetensors`` (the
    weights) plus ``.json`` (architecture, settings, held-out accuracy or reconstruction error), both written
    atomically. ``cache_dir`` defaults to ``$DIFFUSION_CURRICULUM_CACHE``, else
    ``~/.cache/diffusion_curriculum``. The returned net's ``source`` says where it came from (``"trained"``,
    ``"cache"``); memo hits return the very same object. :func:`clear_memo` empties the memo.
    """
    kind = _feature_kind(dataset, kind)
    s = _settings(kind, settings)
    digest = _data_key(dataset, kind, seed, s)
    if digest in _MEMO:
        return _MEMO[digest]
    root = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    stem = root / "feature_nets" / f"{kind}-{digest[:24]}"
    net = _load_cached(stem, kind, digest)
    if net is None:
        net = train_feature_net(dataset, seed=seed, kind=kind, **s)
        _save_cached(stem, net, digest)
    _MEMO[digest] = net
    return net


def clear_memo() -> None:
    """Forget the feature nets and Inception networks kept in memory by this process."""
    _MEMO.clear()
    _INCEPTION_MEMO.clear()


@torch.no_grad()
def extract_features(net: nn.Module, images: Tensor, batch_size: int = 1024) -> Tensor:
    """``net.features`` of images ``[N, C, H, W]`` (in [-1, 1]) in batches, as a float32 CPU tensor."""
    param = next(net.parameters())
    x = torch.as_tensor(images).detach()
    out = [net.features(c.to(param.device, param.dtype)).float().cpu() for c in x.split(batch_size)]
    return torch.cat(out) if out else torch.empty(0, net.feature_dim)


# ------------------------------------------------------------------------------------------------------
# Inception-v3 FID network
# ------------------------------------------------------------------------------------------------------
_WEIGHTS_HELP = (
    "download pt_inception-2015-12-05-6726825d.pth (the FID Inception weights used by pytorch-fid, "
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth) "
    "on a machine with internet and pass its path as inception_weights=PATH"
)


class _ConvBN(nn.Module):
    """Conv (no bias) + BatchNorm (eps 0.001, TensorFlow's) + ReLU; keys ``conv.weight``, ``bn.*``."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: Tensor) -> Tensor:
    # TensorFlow's average pooling ignores the zero padding, hence count_include_pad=False
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):  # 35x35 blocks Mixed_5b/5c/5d
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 64, 1)
        self.branch5x5_1 = _ConvBN(cin, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg3(x))
        return torch.cat([b1, b5, b3, bp], 1)


class _BlockB(nn.Module):  # grid reduction Mixed_6a (35 -> 17)
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, 3, stride=2)], 1)


class _BlockC(nn.Module):  # 17x17 blocks Mixed_6b..6e with factorised 7x7 convolutions
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 192, 1)
        self.branch7x7_1 = _ConvBN(cin, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4):
            bd = layer(bd)
        bd = self.branch7x7dbl_5(bd)
        return torch.cat([b1, b7, bd, self.branch_pool(_avg3(x))], 1)


class _BlockD(nn.Module):  # grid reduction Mixed_7a (17 -> 8)
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = _ConvBN(cin, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class _BlockE(nn.Module):  # 8x8 blocks Mixed_7b (average pool) and Mixed_7c (max pool, FID-specific)
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _ConvBN(cin, 320, 1)
        self.branch3x3_1 = _ConvBN(cin, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        t = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(t), self.branch3x3_2b(t)], 1)
        t = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(t), self.branch3x3dbl_3b(t)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([b1, b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """The Inception-v3 of FID ("pt_inception-2015-12-05", Szegedy et al. 2016 as ported from TensorFlow).

    Architecture as used by pytorch-fid / torch-fidelity for the FID of Heusel et al. 2017: images in [-1, 1]
    are resized to 299x299 (bilinear, ``align_corners=False``, as pytorch-fid), passed through the stem,
    the 35x35 blocks ``Mixed_5b/5c/5d``, ``Mixed_6a``, the 17x17 blocks ``Mixed_6b..6e``, ``Mixed_7a`` and the
    8x8 blocks ``Mixed_7b`` (average pooling without padding counts) and ``Mixed_7c`` (max pooling in the pool
    branch, a quirk of the TensorFlow graph), then averaged to the 2048-d "pool3" features.

    State-dict keys (the published file's names): ``Conv2d_1a_3x3``, ``Conv2d_2a_3x3``, ``Conv2d_2b_3x3``,
    ``Conv2d_3b_1x1``, ``Conv2d_4a_3x3``, ``Mixed_5b`` … ``Mixed_7c`` (branches such as
    ``Mixed_5b.branch5x5_1``), each conv as ``<name>.conv.weight`` and ``<name>.bn.{weight,bias,running_mean,
    running_var}`` (``num_batches_tracked`` optional), and ``fc.weight`` [1008, 2048] / ``fc.bias`` [1008]
    (loaded when present, unused for FID).
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _BlockA(192, 32)
        self.Mixed_5c = _BlockA(256, 64)
        self.Mixed_5d = _BlockA(288, 64)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b = _BlockC(768, 128)
        self.Mixed_6c = _BlockC(768, 160)
        self.Mixed_6d = _BlockC(768, 160)
        self.Mixed_6e = _BlockC(768, 192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b = _BlockE(1280, max_pool=False)
        self.Mixed_7c = _BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)
        self.feature_dim = 2048

    def features(self, x: Tensor) -> Tensor:
        """2048-d pool3 features of images ``[N, 3, H, W]`` in [-1, 1] (any size; resized to 299x299)."""
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
        ):
            x = block(x)
        for block in (self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


def _is_optional_key(key: str) -> bool:
    return key.endswith("num_batches_tracked") or key in ("fc.weight", "fc.bias")


def load_inception(
    weights_path: str | os.PathLike | None, device: str | torch.device = "cpu"
) -> FIDInceptionV3:
    """:class:`FIDInceptionV3` with the weights of a local file (``.pth`` or ``.safetensors``), memoised.

    A ``.pth`` is read with ``torch.load(path, map_location="cpu", weights_only=True)`` (nothing else is
    unpickled); anything else with safetensors. The keys and shapes must be those listed on
    :class:`FIDInceptionV3`; a missing file, missing or unexpected keys or a wrong shape raise ``ValueError``.
    """
    if weights_path is None or str(weights_path) == "":
        raise ValueError(f"inception_weights is not set: {_WEIGHTS_HELP}")
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise ValueError(f"the Inception weights file {str(path)!r} does not exist: {_WEIGHTS_HELP}")
    stat = path.stat()
    memo_key = (str(path.resolve()), int(stat.st_mtime_ns), int(stat.st_size))
    dev = torch.device(device)
    if memo_key in _INCEPTION_MEMO:
        return _INCEPTION_MEMO[memo_key].to(dev)
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # any failure to read is the same problem for the user
        raise ValueError(
            f"the Inception weights file {str(path)!r} cannot be read as a state_dict ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); {_WEIGHTS_HELP}"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(
            f"the Inception weights file {str(path)!r} does not hold a state_dict of tensors; {_WEIGHTS_HELP}"
        )
    net = FIDInceptionV3()
    expected = net.state_dict()
    missing = sorted(k for k in expected if k not in state and not _is_optional_key(k))
    unexpected = sorted(k for k in state if k not in expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise ValueError(
            f"the Inception weights file {str(path)!r} is not the FID Inception-v3 state_dict: "
            f"{' and '.join(parts)} keys; {_WEIGHTS_HELP}"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ValueError(
                f"the Inception weights file {str(path)!r} has {k} of shape {tuple(v.shape)}, but the FID "
                f"Inception-v3 needs {tuple(expected[k].shape)}; {_WEIGHTS_HELP}"
            )
    net.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False
    )
    net.eval().requires_grad_(False)
    _INCEPTION_MEMO[memo_key] = net
    return net.to(dev)


def _as_rgb(images: Tensor, name: str) -> Tensor:
    x = torch.as_tensor(images).detach()
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{name} must be images [N, C, H, W] with C = 1 or 3, got shape {tuple(x.shape)}")
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


@torch.no_grad()
def inception_features(
    images: Tensor, net: FIDInceptionV3, batch_size: int = 50, device: str | torch.device = "cpu"
) -> Tensor:
    """2048-d Inception pool3 features ``[N, 2048]`` (float64, CPU) of images ``[N, C, H, W]`` in [-1, 1].

    Grayscale images are repeated to three channels; values are clamped to [-1, 1].
    """
    x = _as_rgb(images, "images")
    dev = torch.device(device)
    net = net.to(dev)
    out = [
        net.features(c.to(dev, torch.float32).clamp(-1, 1)).double().cpu() for c in x.split(int(batch_size))
    ]
    return torch.cat(out)


def inception_fid(
    fake_images: Tensor,
    real_images: Tensor,
    weights_path: str | os.PathLike | None,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
) -> float:
    """FID (Heusel et al. 2017) on 2048-d Inception-v3 pool3 features, weights read from ``weights_path``.

    Images ``[N, C, H, W]`` in [-1, 1] (C = 1 is repeated to RGB), resized to 299x299 inside the network.
    Matches pytorch-fid's preprocessing (bilinear resize); torch-fidelity resizes uint8 images with a
    TensorFlow-1 compatible kernel, so values differ slightly from its numbers. Use ≥ 10k samples for
    numbers comparable with papers; fewer give a biased (higher) estimate.
    """
    net = load_inception(weights_path, device)
    fake = inception_features(fake_images, net, batch_size, device)
    real = inception_features(real_images, net, batch_size, device)
    return frechet_distance(fake, real)


# ------------------------------------------------------------------------------------------------------
# Precision and recall (Kynkäänniemi et al. 2019)
# ------------------------------------------------------------------------------------------------------
def _as_float_tensor(x: Tensor | np.ndarray, name: str) -> Tensor:
    t = torch.as_tensor(x).detach().to("cpu")
    if t.dim() != 2:
        raise ValueError(f"{name} must be [N, D], got shape {tuple(t.shape)}")
    return t.float() if t.dtype != torch.float64 else t


@torch.no_grad()
def knn_radii(features: Tensor | np.ndarray, k: int = 3, chunk_size: int = 1024) -> Tensor:
    """Distance from every sample to its ``k``-th nearest neighbour in the same set (itself excluded).

    The radius of the hypersphere around each sample in Kynkäänniemi et al. 2019, §2 (``NN_k(φ)``).
    Distances are computed in row chunks of ``chunk_size`` (``torch.cdist``), so memory stays
    ``O(chunk_size · N)``.
    """
    f = _as_float_tensor(features, "features")
    n = f.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k={k} must be at least 1 and smaller than the number of samples ({n})")
    radii = []
    for chunk in f.split(chunk_size):
        d = torch.cdist(chunk, f)
        # the k+1 smallest include the sample itself (distance 0)
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


@torch.no_grad()
def _coverage(query: Tensor, ref: Tensor, ref_radii: Tensor, chunk_size: int) -> float:
    """Fraction of ``query`` rows within ``ref_radii[j]`` of some ``ref[j]`` (Kynkäänniemi's f(φ, Φ))."""
    inside = []
    for chunk in query.split(chunk_size):
        d = torch.cdist(chunk, ref)
        inside.append((d <= ref_radii.unsqueeze(0)).any(dim=1))
    return float(torch.cat(inside).float().mean())


def precision_recall(
    real_features: Tensor | np.ndarray,
    fake_features: Tensor | np.ndarray,
    k: int = 3,
    chunk_size: int = 1024,
    real_radii: Tensor | None = None,
    fake_radii: Tensor | None = None,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, §2) on feature sets ``[N, D]``.

    Each set's manifold is the union of balls around its samples with radius the distance to the sample's
    ``k``-th nearest neighbour (k = 3 as in the paper). Precision is the fraction of generated samples
    inside the real manifold, recall the fraction of real samples inside the generated manifold. Radii may
    be passed precomputed (:func:`knn_radii`); distances are computed in chunks (``torch.cdist``).
    """
    real = _as_float_tensor(real_features, "real_features")
    fake = _as_float_tensor(fake_features, "fake_features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: real has {real.shape[1]}, fake has {fake.shape[1]}")
    if real.dtype != fake.dtype:
        real, fake = real.double(), fake.double()
    r_real = knn_radii(real, k, chunk_size) if real_radii is None else real_radii.to(real.dtype)
    r_fake = knn_radii(fake, k, chunk_size) if fake_radii is None else fake_radii.to(fake.dtype)
    precision = _coverage(fake, real, r_real, chunk_size)
    recall = _coverage(real, fake, r_fake, chunk_size)
    return precision, recall


# ------------------------------------------------------------------------------------------------------
# Points: sliced Wasserstein and MMD
# ------------------------------------------------------------------------------------------------------
def _points(x: Tensor | np.ndarray, name: str) -> Tensor:
    t = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if t.dim() != 2 or t.shape[0] < 1:
        raise ValueError(f"{name} must be points [N, D] with N >= 1, got shape {tuple(t.shape)}")
    return t


def _quantiles(sorted_vals: Tensor, levels: Tensor) -> Tensor:
    """Linear interpolation of the empirical quantile function: ``sorted_vals`` [N, P] at ``levels`` [K]."""
    n = sorted_vals.shape[0]
    pos = (levels * n - 0.5).clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    frac = (pos - lo.to(pos.dtype)).unsqueeze(1)
    return sorted_vals[lo] * (1 - frac) + sorted_vals[hi] * frac


def sliced_wasserstein(
    x: Tensor | np.ndarray, y: Tensor | np.ndarray, n_projections: int = 256, seed: int = 0, p: int = 2
) -> float:
    """Sliced p-Wasserstein distance ``SW_p = (E_θ W_p^p(θ#x, θ#y))^{1/p}`` (Bonneel et al. 2015, §2;
    Deshpande et al. 2018, §3), averaged over ``n_projections`` random unit directions θ.

    Default ``p = 2`` (the sliced 2-Wasserstein: the root of the mean squared 1-D W2); the result is in the
    units of the data. Each 1-D distance matches sorted projections; for unequal sample sizes both quantile
    functions are interpolated linearly at ``max(N, M)`` common levels ``(i + ½)/K``. The directions come
    from a ``torch.Generator`` seeded with ``seed`` (normal vectors, normalised), so the value is
    deterministic.
    """
    a, b = _points(x, "x"), _points(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"dimensions differ: x has {a.shape[1]}, y has {b.shape[1]}")
    if p < 1:
        raise ValueError(f"p={p} must be at least 1")
    g = torch.Generator().manual_seed(int(seed))
    theta = torch.randn(a.shape[1], int(n_projections), generator=g, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    pa, _ = (a @ theta).sort(dim=0)
    pb, _ = (b @ theta).sort(dim=0)
    if pa.shape[0] != pb.shape[0]:
        k = max(pa.shape[0], pb.shape[0])
        levels = (torch.arange(k, dtype=torch.float64) + 0.5) / k
        pa, pb = _quantiles(pa, levels), _quantiles(pb, levels)
    per_direction = (pa - pb).abs().pow(p).mean(dim=0)  # W_p^p along each θ
    return float(per_direction.mean().pow(1.0 / p))


def _kernel_sum(a: Tensor, b: Tensor, bandwidths: tuple[float, ...], chunk_size: int = 1024) -> float:
    """``Σ_ij Σ_σ exp(−‖a_i − b_j‖² / (2σ²))`` in row chunks (memory ``O(chunk_size · len(b))``)."""
    total = 0.0
    for chunk in a.split(chunk_size):
        d2 = torch.cdist(chunk, b).pow_(2)
        for sigma in bandwidths:
            total += float(torch.exp(d2 * (-1.0 / (2.0 * float(sigma) ** 2))).sum())
    return total


def _check_bandwidths(bandwidths) -> tuple[float, ...]:
    bw = tuple(float(s) for s in bandwidths)
    if not bw or any(not s > 0 for s in bw):
        raise ValueError(f"bandwidths={bandwidths!r} must be a non-empty list of positive numbers")
    return bw


def _mmd_from_sums(kxx: float, kyy: float, kxy: float, m: int, n: int, n_kernels: int) -> float:
    # the diagonal of each within-set sum is exactly one per kernel per sample: remove it (unbiased estimate)
    xx = (kxx - m * n_kernels) / (m * (m - 1))
    yy = (kyy - n * n_kernels) / (n * (n - 1))
    return float(xx + yy - 2.0 * kxy / (m * n))


def mmd(
    x: Tensor | np.ndarray, y: Tensor | np.ndarray, bandwidths: tuple[float, ...] = (0.1, 0.5, 1, 2, 5)
) -> float:
    """Unbiased squared maximum mean discrepancy ``MMD²_u`` (Gretton et al. 2012, Lemma 6 / Eq. 3).

    ``MMD²_u = 1/(m(m−1)) Σ_{i≠j} k(x_i, x_j) + 1/(n(n−1)) Σ_{i≠j} k(y_i, y_j)
    − 2/(mn) Σ_{i,j} k(x_i, y_j)`` with the kernel a sum of Gaussian RBFs
    ``k(u, v) = Σ_σ exp(−‖u − v‖² / (2σ²))`` over ``bandwidths``
    (a sum of characteristic kernels is characteristic). Being unbiased, it can be slightly negative when
    both samples come from the same distribution. Float64, chunked pairwise distances.
    """
    a, b = _points(x, "x"), _points(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"dimensions differ: x has {a.shape[1]}, y has {b.shape[1]}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("mmd needs at least two samples in each set")
    bw = _check_bandwidths(bandwidths)
    kxx, kyy, kxy = _kernel_sum(a, a, bw), _kernel_sum(b, b, bw), _kernel_sum(a, b, bw)
    return _mmd_from_sums(kxx, kyy, kxy, a.shape[0], b.shape[0], len(bw))


# ------------------------------------------------------------------------------------------------------
# Evaluator
# ------------------------------------------------------------------------------------------------------
class Evaluator:
    """Metrics of generated samples against one dataset, with everything about the real data precomputed.

    Images: ``fd`` (Fréchet distance on the features of :func:`feature_net` — the classifier when the dataset
    has labels, else the autoencoder; which one is in :attr:`fd_features`), ``precision`` and ``recall``
    (Kynkäänniemi et al. 2019, k = ``k``, same features) and, when ``inception_weights`` is given, ``fid``
    (Inception-v3, :func:`inception_fid`). Points: ``swd`` (:func:`sliced_wasserstein`, p = 2) and ``mmd``
    (:func:`mmd`) against fresh points — for the toy sets a new draw of ``n_real`` (default 5000) points
    with seed ``seed + EVAL_SEED_OFFSET`` (never the training draw), for other point data the dataset itself.

    ``feature_settings`` override the feature net's training settings (e.g. ``{"steps": 2000}``, see
    :func:`train_feature_net`); ``device`` is where the Inception network runs (the small feature nets run on
    the CPU). ``n_real`` caps the real images used (a random subset drawn with ``seed``; default: all).
    Samples with NaN or infinite values give NaN for every metric; images are clamped to [-1, 1] first.
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
        bandwidths: tuple[float, ...] = (0.1, 0.5, 1, 2, 5),
        n_projections: int = 256,
        device: str | torch.device = "cpu",
        feature_settings: dict[str, Any] | None = None,
    ):
        if n_real is not None and (isinstance(n_real, bool) or not isinstance(n_real, int) or n_real < 2):
            raise ValueError(f"n_real={n_real!r} must be an integer >= 2 or None")
        self.kind = dataset.kind
        self.shape = dataset.shape
        self.seed = int(seed)
        self.k = int(k)
        self.device = torch.device(device)
        self.fd_features: str | None = None
        self.feature_net: nn.Module | None = None
        self.inception: FIDInceptionV3 | None = None
        self.keys: tuple[str, ...]
        if dataset.kind == "image":
            self.feature_net = feature_net(
                dataset, seed=seed, cache_dir=cache_dir, **(feature_settings or {})
            )
            self.fd_features = self.feature_net.kind
            real = dataset.data
            if n_real is not None and n_real < len(dataset):
                g = torch.Generator().manual_seed(self.seed)
                real = real[torch.randperm(len(dataset), generator=g)[:n_real]]
            self.real_images = real
            self.real_features = extract_features(self.feature_net, real)
            if self.real_features.shape[0] <= self.k:
                raise ValueError(f"precision/recall with k={self.k} need more than {self.k} real images")
            self.real_radii = knn_radii(self.real_features, self.k)
            self._real_stats = _gaussian(self.real_features.double().numpy())
            self.keys = ("fd", "precision", "recall")
            if inception_weights is not None:
                self.inception = load_inception(inception_weights, self.device)
                self.real_inception = inception_features(real, self.inception, device=self.device)
                self.keys = (*self.keys, "fid")
        else:
            self.bandwidths = _check_bandwidths(bandwidths)
            self.n_projections = int(n_projections)
            if dataset.name in TOY_DATASETS:
                real, _ = toy_points(dataset.name, n_real or 5000, seed=self.seed + EVAL_SEED_OFFSET)
            else:
                real = dataset.data
                if n_real is not None and n_real < len(dataset):
                    g = torch.Generator().manual_seed(self.seed)
                    real = real[torch.randperm(len(dataset), generator=g)[:n_real]]
            self.real_points = real.to(torch.float64)
            self._kyy = _kernel_sum(self.real_points, self.real_points, self.bandwidths)
            self.keys = ("swd", "mmd")

    def __call__(self, samples: Tensor) -> dict[str, float]:
        """The metrics of ``samples`` (images ``[N, C, H, W]`` in [-1, 1], or points ``[N, D]``)."""
        x = torch.as_tensor(samples).detach().to("cpu", torch.float32)
        if tuple(x.shape[1:]) != tuple(self.shape) or x.shape[0] < 2:
            raise ValueError(
                f"samples have shape {tuple(x.shape)}, but this evaluator needs at least 2 samples of shape "
                f"{tuple(self.shape)}"
            )
        if not torch.isfinite(x).all():
            return {k: float("nan") for k in self.keys}
        if self.kind == "image":
            x = x.clamp(-1, 1)
            feats = extract_features(self.feature_net, x)
            if feats.shape[0] >= feats.shape[1] and self.real_features.shape[0] >= feats.shape[1]:
                out = {"fd": _fd_from_stats(*_gaussian(feats.double().numpy()), *self._real_stats)}
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
        pts = x.to(torch.float64)
        kxx = _kernel_sum(pts, pts, self.bandwidths)
        kxy = _kernel_sum(pts, self.real_points, self.bandwidths)
        return {
            "swd": sliced_wasserstein(pts, self.real_points, self.n_projections, seed=self.seed),
            "mmd": _mmd_from_sums(
                kxx, self._kyy, kxy, pts.shape[0], self.real_points.shape[0], len(self.bandwidths)
            ),
        }
