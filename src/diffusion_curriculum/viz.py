"""Pictures, in one place: sample grids and scatter plots, and the plots of runs and comparisons.

Everything is drawn with matplotlib's Agg backend (no display needed) and written atomically — to a temporary
name beside the target, then renamed — so a crash never leaves a half-written PNG. The analyses draw their own
figures with :func:`figure` and :func:`save_figure`.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch import Tensor

from .checks import atomic_path

__all__ = [
    "drawn_levels_plot",
    "figure",
    "quality_plot",
    "save_figure",
    "save_grid",
    "timestep_plots",
    "to_image_grid",
    "validation_plot",
]


def figure(nrows: int = 1, ncols: int = 1, size=(6.4, 4.0)):
    """``(pyplot, figure, axes)`` on the Agg backend; ``axes`` is always a 2-D array (``squeeze=False``)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(nrows, ncols, figsize=size, squeeze=False)
    return plt, fig, ax


def save_figure(plt, fig, path: str | os.PathLike) -> None:
    """Save ``fig`` as a PNG at ``path`` (110 dpi, tight), atomically, and close it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)


# -- samples -----------------------------------------------------------------------------------------------
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


_IMAGE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP"}


def save_grid(x: Tensor, path: str | os.PathLike, nrow: int | None = None, min_width: int = 256) -> None:
    """Write a PNG: a grid of images ``[N, C, H, W]`` in [-1, 1], or a scatter plot of points ``[N, D]``.

    Small image grids are upscaled by an integer factor (nearest neighbour) to be at least ``min_width``
    pixels wide. Points are plotted with matplotlib's Agg canvas (first two coordinates). The file is written
    to a temporary name in the same folder and renamed, so a crash never leaves a half-written PNG.
    """
    x = torch.as_tensor(x).detach().float().cpu()
    with atomic_path(path) as tmp:
        if x.dim() == 2:
            _write_scatter(x, str(tmp))
        else:
            from PIL import Image

            grid = to_image_grid(x, nrow=nrow)
            factor = max(1, math.ceil(min_width / grid.shape[1]))
            if factor > 1:
                grid = np.repeat(np.repeat(grid, factor, axis=0), factor, axis=1)
            # the format the suffix names (.jpg, .bmp, .webp); PNG otherwise
            fmt = _IMAGE_FORMATS.get(os.path.splitext(os.fspath(path))[1].lower(), "PNG")
            Image.fromarray(grid).save(tmp, format=fmt)


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


# -- runs and comparisons ----------------------------------------------------------------------------------
def timestep_plots(records: list[dict], path: str | os.PathLike, title: str = "") -> bool:
    """Drawn-noise-level distribution over training (a heat map: one column per evaluation interval) and, when
    the sampler reports stages, the stage timeline beneath it. Returns False when there is nothing to plot."""
    hists = [r for r in records if "t_hist" in r]
    stages = [
        (r["step"], r["sampler"]["stage"], r["sampler"].get("phase", ""))
        for r in records
        if isinstance(r.get("sampler"), dict) and isinstance(r["sampler"].get("stage"), (int, float))
    ]
    if not hists:
        return False
    plt, fig, ax = figure(2 if stages else 1, 1, size=(7.0, 6.0 if stages else 3.6))
    h = np.array([r["t_hist"] for r in hists], dtype=float)
    ratio = h / np.maximum(h.sum(1, keepdims=True), 1) * h.shape[1]  # 1 = the uniform share
    edges = hists[0]["t_hist_edges"]
    steps = [r["step"] for r in hists]
    x_edges = np.array([0, *steps], dtype=float)
    a = ax[0, 0]
    y_edges = np.asarray(edges, dtype=float)
    mesh = a.pcolormesh(x_edges, y_edges, ratio.T, cmap="viridis", shading="flat", **share_range(ratio))
    fig.colorbar(mesh, ax=a, label="share of draws ÷ uniform's")
    a.set_xlabel("step")
    a.set_ylabel(hists[0].get("t_hist_unit", "t"))
    a.set_title(title or "noise levels drawn per evaluation interval")
    if stages:
        b = ax[1, 0]
        s = np.array([x[0] for x in stages])
        st = np.array([x[1] for x in stages], dtype=float)
        b.step(s, st, where="post", color="C1")
        joint = [x[0] for x in stages if x[2] == "joint"]
        if joint:
            b.axvline(joint[0], color="k", ls="--", lw=1, label=f"joint phase from step {joint[0]}")
            b.legend(loc="lower right")
        b.set_xlabel("step")
        b.set_ylabel("curriculum stage")
        b.set_xlim(a.get_xlim())
    save_figure(plt, fig, path)
    return True


def validation_plot(records: list[dict], path: str | os.PathLike, edges: list[float], unit: str) -> bool:
    """The fixed validation loss per noise-level bucket over training (a heat map, log colour scale: one column
    per evaluation, one row per bucket of ``edges`` in ``unit``) and, when the records carry the excess over the
    optimal loss, beneath it the share of each bucket's loss that is excess (0: solved, as well as the training
    set allows). Returns False when no record has ``val_loss``."""
    from matplotlib.colors import LogNorm

    k = len(edges) - 1
    # records of this bucket count only (eval.val_buckets may change on resume: earlier records keep theirs)
    recs = [r for r in records if f"val_loss/{k - 1}" in r and f"val_loss/{k}" not in r]
    if not recs:
        return False
    loss = np.array([[r[f"val_loss/{i}"] for i in range(k)] for r in recs], dtype=float)
    excess = all("val_excess" in r for r in recs)
    plt, fig, ax = figure(2 if excess else 1, 1, size=(7.0, 6.4 if excess else 3.6))
    x_edges = np.array([0, *[r["step"] for r in recs]], dtype=float)
    y_edges = np.asarray(edges, dtype=float)
    a = ax[0, 0]
    positive = loss[loss > 0]
    norm = LogNorm(positive.min(), positive.max()) if positive.size else None
    mesh = a.pcolormesh(x_edges, y_edges, np.where(loss > 0, loss, np.nan).T, norm=norm, shading="flat")
    fig.colorbar(mesh, ax=a, label="validation loss")
    a.set_ylabel(unit)
    a.set_title(f"fixed validation loss per noise level (on {recs[-1].get('val_on', 'train')} data)")
    if excess:
        share = np.array([[r[f"val_excess/{i}"] for i in range(k)] for r in recs], dtype=float) / loss
        b = ax[1, 0]
        mesh = b.pcolormesh(x_edges, y_edges, share.T, vmin=0, vmax=1, cmap="magma", shading="flat")
        fig.colorbar(mesh, ax=b, label="(loss - optimal) / loss")
        b.set_ylabel(unit)
        b.set_title("share of the loss above the training set's optimal loss")
    ax[-1, 0].set_xlabel("step")
    save_figure(plt, fig, path)
    return True


def share_range(ratio: np.ndarray) -> dict[str, float]:
    """The colour range of a drawn-noise heat map whose cells are share ÷ uniform share: fixed from 0 to at least
    2 (twice uniform), wider only when a cell is above that, so a uniform draw's few-percent noise stays one
    colour instead of being stretched over the whole scale."""
    return {"vmin": 0.0, "vmax": max(2.0, float(np.max(ratio)) if ratio.size else 2.0)}


def plain_log_axis(ax) -> None:
    """Tick labels of a log-scaled y axis as plain numbers (``40``, not ``4 × 10^1``); which minor ticks get a
    label is still matplotlib's choice (all of them only on a short range)."""
    from matplotlib.ticker import FuncFormatter

    minor = ax.yaxis.get_minor_formatter()
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, pos: f"{v:g}" if minor(v, pos) else ""))


def quality_plot(path: str | os.PathLike, curves: dict[str, list[dict[int, float]]], key: str) -> None:
    """Quality over training per method: ``curves[label]`` holds one ``{step: value}`` per seed; drawn are the
    geometric mean over seeds (on the steps every seed evaluated) and a min..max band, log scale."""
    plt, fig, ax = figure(size=(7.0, 4.4))
    a = ax[0, 0]
    drawn = False
    for i, (lab, per_seed) in enumerate(curves.items()):
        steps = sorted(set.intersection(*[set(c) for c in per_seed])) if all(per_seed) else []
        if not steps:
            continue
        drawn = True
        vals = np.array([[c[s] for s in steps] for c in per_seed])
        lv = np.log(vals)
        mean, lo, hi = np.exp(lv.mean(0)), vals.min(0), vals.max(0)
        a.plot(steps, mean, color=f"C{i % 10}", label=lab)
        a.fill_between(steps, lo, hi, color=f"C{i % 10}", alpha=0.15)
    if not drawn:  # no method has a curve yet: no empty figure, no legend warning
        plt.close(fig)
        return
    a.set_yscale("log")
    plain_log_axis(a)
    a.set_xlabel("step")
    a.set_ylabel(f"{key} (geometric mean over seeds; band = min..max)")
    a.legend(fontsize=7)
    save_figure(plt, fig, path)


def drawn_levels_plot(path: str | os.PathLike, hists: dict[str, list[dict]]) -> bool:
    """The share of all draws over training per noise-level bin, one line per method: ``hists[label]`` are
    that method's records holding ``t_hist`` / ``t_hist_edges``. Writes nothing and returns False when no
    method has any."""
    plt, fig, ax = figure(size=(7.0, 4.0))
    a = ax[0, 0]
    drawn = False
    for i, (lab, recs) in enumerate(hists.items()):
        if not recs:
            continue
        h = np.sum([r["t_hist"] for r in recs], axis=0).astype(float)
        edges = np.asarray(recs[0]["t_hist_edges"], dtype=float)
        a.stairs(h / max(h.sum(), 1), edges, color=f"C{i % 10}", label=lab)
        a.set_xlabel(recs[0].get("t_hist_unit", "t"))
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    a.set_ylabel("share of all draws over training")
    a.legend(fontsize=7)
    save_figure(plt, fig, path)
    return True
