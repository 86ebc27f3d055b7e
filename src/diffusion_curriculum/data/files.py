"""The user's own data: a ``.npz`` / ``.npy`` array file or a folder of image files.

Both end as float32 tensors in memory (images ``[N, C, H, W]`` in [-1, 1], or points ``[N, D]``); every problem with
the file is a :class:`~diffusion_curriculum.data.DataError` saying which file, what is wrong and what to do.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..checks import first_line, is_int
from .dataset import UINT8_CODEC, DataError, Dataset
from .registry import DatasetSpec, register

__all__ = ["IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
#: class names a folder dataset's note lists (the first ones; the rest are counted)
CLASSES_SHOWN = 20


# -- npz -----------------------------------------------------------------------------------------------
def _load_npz(path: str, n=None, seed=0) -> Dataset:
    """The images (or points) and optional labels of a ``.npz`` / ``.npy`` file; see :func:`load`."""
    if os.path.isdir(path):
        raise DataError(
            f"dataset.path {path!r} is a folder, but dataset 'npz' needs a .npz file; use dataset.name=folder"
        )
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        why = _short(e)
        if "pickle" in why:  # numpy's guess for bytes that are neither a zip archive nor a .npy header
            why = "it holds neither a numpy .npz archive nor a .npy array"
        raise DataError(
            f"dataset.path {path!r} is not a readable .npz/.npy file ({why}); re-save it with numpy.savez"
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
    data, kind, read_as, codec = _images_to_tensor(images, key, path)
    label_tensor = None
    if labels is not None:
        if (
            labels.ndim != 1
            or labels.shape[0] != data.shape[0]
            or not np.issubdtype(labels.dtype, np.integer)
            or (labels.size and labels.min() < 0)
        ):
            lowest = (
                f", smallest {labels.min()}" if labels.size and np.issubdtype(labels.dtype, np.number) else ""
            )
            raise DataError(
                f"array 'labels' in {path!r} has shape {labels.shape} and dtype {labels.dtype}{lowest}, but it "
                f"must be class indices 0, 1, ... of shape ({data.shape[0]},); fix the labels or drop them"
            )
        label_tensor = torch.as_tensor(labels.astype(np.int64))
    noun = "images" if kind == "image" else "points"
    note = f"npz file: {data.shape[0]} {noun} of shape {tuple(data.shape[1:])} in {key} ({read_as})"
    return Dataset(
        data=data,
        labels=label_tensor,
        name=Path(path).stem,
        kind=kind,
        note=note + _labels_said(labels),
        codec=codec,
    )


def _labels_said(labels: np.ndarray | None) -> str:
    """What a dataset's note says of its labels: the class count, and the classes without a sample when the
    labels do not run 0, 1, ... without gaps (labels 5..24 make 25 classes, 0..4 empty)."""
    if labels is None or not labels.size:
        return "; no labels"
    present = np.unique(labels)
    k = int(present.max()) + 1
    said = f"; labels 0..{k - 1}: {k} classes"
    if len(present) < k:
        missing = sorted(set(range(k)) - {int(v) for v in present})
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        said += (
            f", {len(missing)} of them without a sample ({shown}); relabel to 0..{len(present) - 1} if the gaps are "
            "not meant"
        )
    return said


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


def _images_to_tensor(
    arr: np.ndarray, key: str, path: str
) -> tuple[Tensor, str, str, tuple[float, float] | None]:
    """Turn a numeric array into ``[N, C, H, W]`` images in [-1, 1] (or ``[N, D]`` points); also the kind, how it
    was read (layout and value range), for the dataset's note, and the codec: integer images stay uint8 codes of
    a compact :class:`Dataset` (``codec`` :data:`UINT8_CODEC`), float ones are float32 (``codec`` ``None``)."""
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
        return (
            torch.as_tensor(arr.astype(np.float32)).contiguous(),
            "points",
            "points N x D, used as they are",
            None,
        )
    if arr.ndim == 3:
        arr, layout = arr[:, None], "NHW, grayscale"
    else:
        nchw = _to_nchw(arr, where)
        layout = "NCHW" if nchw is arr else "NHWC"
        arr = nchw
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise DataError(
                f"{where} holds integers in [{lo}, {hi}], but integer images must be 0..255; save as uint8"
            )
        x = torch.as_tensor(np.ascontiguousarray(arr, dtype=np.uint8))
        scale = "integers 0..255 mapped to [-1, 1]"
        return x, "image", f"{layout}, {scale}", UINT8_CODEC
    else:
        lo, hi = float(arr.min()), float(arr.max())
        x = torch.as_tensor(arr.astype(np.float32))
        scale = "floats in [-1, 1], kept"
        if lo >= 0.0 and hi <= 1.0:
            x = x * 2.0 - 1.0
            scale = "floats in [0, 1] mapped to [-1, 1]"
        elif not (lo >= -1.0 and hi <= 1.0):
            raise DataError(
                f"{where} holds floats in [{lo:.4g}, {hi:.4g}], but float images must lie in [0, 1] or "
                "[-1, 1]; rescale the array"
            )
    return x.contiguous(), "image", f"{layout}, {scale}", None


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
def _load_folder(path: str, n=None, seed=0, size: int | None = None, channels: int | None = None) -> Dataset:
    """Every image file under ``path`` (labels from first-level subfolders); see :func:`load`.

    ``channels`` 1 reads every file as grayscale, 3 as RGB; ``None`` (not set) detects it: 1 when every file is
    grayscale (a grayscale file, or an RGB one whose pixels all have R = G = B), else 3. The choice is stated
    in the dataset's ``note``, which the trainer shows as the run starts."""
    root = Path(path)
    _check_folder_settings(root, path, size, channels)
    files = _image_files(root, path)
    out, gray = _read_images(files, size, channels)
    name = root.name or "folder"
    note, choices = None, {}
    if channels is None:
        choices = {"channels": 1 if gray else 3}
        out = out[..., :1] if gray else out
        kind = "every file is grayscale" if gray else "the files are in colour"
        other = 3 if gray else 1
        note = (
            f"dataset {name!r}: {len(files)} images, {kind}, so {out.shape[-1]} channel(s) "
            f"({out.shape[-1]}x{out.shape[1]}x{out.shape[2]}); set dataset.channels={other} to change that"
        )
    data = torch.as_tensor(np.ascontiguousarray(out)).permute(0, 3, 1, 2)  # uint8 codes of UINT8_CODEC
    labels, classes, said = _folder_labels(root, files, name)
    if said:  # the label of each class, said as the run starts (and kept in its train.log)
        note = said if note is None else f"{note}; {said}"
    return Dataset(
        data=data.contiguous(),
        labels=labels,
        name=name,
        kind="image",
        classes=classes,
        note=note,
        choices=choices,
        codec=UINT8_CODEC,
    )


def _check_folder_settings(root: Path, path: str, size, channels) -> None:
    """One DataError for a path that is no folder, or a ``channels`` / ``size`` that is not allowed."""
    if not root.is_dir():
        raise DataError(
            f"dataset.path {path!r} is a file, but dataset 'folder' needs a folder of images; use "
            "dataset.name=npz for a .npz file"
        )
    if channels is not None and (not is_int(channels) or channels not in (1, 3)):
        raise DataError(
            f"dataset.channels={channels!r} is not allowed; use 1 (grayscale) or 3 (RGB), or null"
        )
    if size is not None and not (is_int(size) and size >= 1):
        raise DataError(f"dataset.size={size!r} is not allowed; use a positive integer such as 32, or null")


def _image_files(root: Path, path: str) -> list[Path]:
    """The image files under ``root`` (none inside hidden folders), sorted by their path below it."""
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
    return files


def _read_images(files: list[Path], size: int | None, channels: int | None) -> tuple[np.ndarray, bool]:
    """The files as one uint8 array [N, H, W, C] (grayscale when ``channels`` is 1, RGB otherwise), and whether
    every one of them is grayscale; one DataError for an unreadable file or a size that differs."""
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    gray = True  # every file read so far is grayscale (what channels=None decides on)
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
        gray = gray and bool((arr == arr[:, :, :1]).all())
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
    return out, gray


def _folder_labels(
    root: Path, files: list[Path], name: str
) -> tuple[Tensor | None, tuple[str, ...] | None, str]:
    """Labels from the first-level subfolders when every file sits in one (classes sorted by name), and the
    note's sentence listing them; ``(None, None, "")`` otherwise."""
    rel = [f.relative_to(root).parts for f in files]
    if not all(len(parts) >= 2 for parts in rel):
        return None, None, ""
    classes = tuple(sorted({parts[0] for parts in rel}))
    index = {c: k for k, c in enumerate(classes)}
    labels = torch.tensor([index[parts[0]] for parts in rel], dtype=torch.long)
    listed = ", ".join(f"{k}={c}" for k, c in enumerate(classes[:CLASSES_SHOWN]))
    more = f", ... ({len(classes) - CLASSES_SHOWN} more)" if len(classes) > CLASSES_SHOWN else ""
    return (
        labels,
        classes,
        f"dataset {name!r}: {len(classes)} classes from its sub-folders (sorted): {listed}{more}",
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
    """The exception's first line, short enough to sit inside a one-sentence error, without a final period."""
    return first_line(e, limit=160).rstrip(".") or type(e).__name__


register(DatasetSpec("npz", _load_npz, reads="a .npz file"))
register(DatasetSpec("folder", _load_folder, params=("size", "channels"), reads="a folder of images"))
