"""The Inception-v3 network of FID, implemented here and loaded from a local weights file only.

"pt_inception-2015-12-05" (Szegedy et al. 2016, as ported from TensorFlow) is the network pytorch-fid and
torch-fidelity use for the FID of Heusel et al. 2017. It is written out here because torch-fidelity (and
torchmetrics' FID, which wraps it) imports torchvision; nothing is ever downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from ..checks import first_line
from .frechet import frechet_distance

__all__ = ["FIDInceptionV3", "clear_memo", "inception_features", "inception_fid", "load_inception"]

_INCEPTION_MEMO: dict[tuple[str, int, int], FIDInceptionV3] = {}
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
            f"{first_line(e)}); {_WEIGHTS_HELP}"
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


def clear_memo() -> None:
    """Forget the Inception networks kept in memory by this process."""
    _INCEPTION_MEMO.clear()
