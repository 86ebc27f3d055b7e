"""The library's own feature nets for the Fréchet distance, trained on the dataset itself, and their disk cache.

A CNN classifier (:class:`FeatureNet`) when the dataset has labels of at least two classes, else a convolutional
autoencoder (:class:`AutoEncoder`) whose bottleneck is the feature vector. Both are trained deterministically from
a seed (:func:`train_feature_net`) on the CPU, so no weights are downloaded and the same data, seed and settings
always give the same net. :func:`feature_net` is the cached entry point: an in-process memo, then
``{cache_dir}/feature_nets/`` (safetensors + JSON, keyed by a hash of the data, the labels and every setting).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..checks import atomic_path, atomic_write, check_value, is_int, is_number
from ..data import Dataset

__all__ = [
    "AUTOENCODER_DEFAULTS",
    "CACHE_ENV",
    "CLASSIFIER_DEFAULTS",
    "FEATURE_NET_VERSION",
    "AutoEncoder",
    "FeatureNet",
    "clear_memo",
    "extract_features",
    "feature_net",
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
#: Where :func:`feature_net` caches trained nets unless told otherwise.
CACHE_ENV = "DIFFUSION_CURRICULUM_CACHE"

_MEMO: dict[str, nn.Module] = {}


def _check_image_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"feature nets need images [C, H, W], got a sample shape {tuple(shape)}")
    c, h, w = (int(s) for s in shape)
    if h < 4 or w < 4:
        raise ValueError(f"feature nets need images of at least 4x4 pixels, got {h}x{w}")
    return c, h, w


def _remember_config(net: nn.Module, in_shape: tuple[int, ...], **sizes: int) -> tuple[int, int, int]:
    """Check ``in_shape``, store the architecture as ``net.config`` (what a cache entry rebuilds the net from)
    and ``net.feature_dim``; return ``(C, H, W)``."""
    chw = _check_image_shape(in_shape)
    net.config = {"in_shape": [int(s) for s in in_shape], **{k: int(v) for k, v in sizes.items()}}
    net.feature_dim = int(sizes["feature_dim"])
    return chw


class FeatureNet(nn.Module):
    """A small CNN classifier; its penultimate layer (``feature_dim`` units after ReLU) gives the features.

    Two conv blocks (3x3 convs, ReLU, a 2x2 max-pool after the first), an adaptive average pool to 4x4 (so
    8x8, 28x28, 32x32 or any other size works, with any channel count), a linear layer to ``feature_dim``
    units, and the class logits.
    """

    kind = "classifier"

    def __init__(self, in_shape: tuple[int, ...], n_classes: int, width: int = 32, feature_dim: int = 128):
        super().__init__()
        c, _, _ = _remember_config(self, in_shape, n_classes=n_classes, width=width, feature_dim=feature_dim)
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
        c, h, w_ = _remember_config(self, in_shape, width=width, feature_dim=feature_dim)
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
        check_value(
            f"feature-net setting {key}", s[key], is_int(s[key]) and s[key] >= 1, "a positive integer"
        )
    holdout = s["holdout"]
    check_value(
        "feature-net setting holdout", holdout, is_number(holdout) and 0 <= holdout < 1, "a number in [0, 1)"
    )
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
        # tensors first, JSON last: an entry counts only when both files exist
        with atomic_path(stem.with_suffix(".safetensors")) as tmp:
            save_file(tensors, str(tmp))
        atomic_write(stem.with_suffix(".json"), json.dumps(meta, indent=1))
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
    on_train: Callable[[], None] | None = None,
    **settings: Any,
) -> FeatureNet | AutoEncoder:
    """A trained feature net for ``dataset``: from this process's memo, else the disk cache, else trained.

    ``on_train()``, when given, is called just before a net is trained — never on a memo or cache hit — so a
    caller can announce the wait only when there is one.

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
        if on_train is not None:
            on_train()
        net = train_feature_net(dataset, seed=seed, kind=kind, **s)
        _save_cached(stem, net, digest)
    _MEMO[digest] = net
    return net


def clear_memo() -> None:
    """Forget the feature nets kept in memory by this process (the disk cache stays)."""
    _MEMO.clear()


@torch.no_grad()
def extract_features(net: nn.Module, images: Tensor, batch_size: int = 1024) -> Tensor:
    """``net.features`` of images ``[N, C, H, W]`` (in [-1, 1]) in batches, as a float32 CPU tensor."""
    param = next(net.parameters())
    x = torch.as_tensor(images).detach()
    out = [net.features(c.to(param.device, param.dtype)).float().cpu() for c in x.split(batch_size)]
    return torch.cat(out) if out else torch.empty(0, net.feature_dim)
