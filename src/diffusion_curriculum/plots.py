"""Plots of a run (matplotlib, Agg backend, files written atomically): which noise levels were drawn over
training, and the curriculum's stage timeline."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np


def _figure(nrows: int = 1, ncols: int = 1, size=(6.4, 4.0)):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(nrows, ncols, figsize=size, squeeze=False)
    return plt, fig, ax


def save_figure(plt, fig, path: str | os.PathLike) -> None:
    """Save to a temporary name beside ``path`` and rename, so a crash never leaves a half-written PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a ``metrics.jsonl``; a torn or foreign line is skipped."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            out.append(rec)
    return out


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
    plt, fig, ax = _figure(2 if stages else 1, 1, size=(7.0, 6.0 if stages else 3.6))
    h = np.array([r["t_hist"] for r in hists], dtype=float)
    h = h / np.maximum(h.sum(1, keepdims=True), 1)
    edges = hists[0]["t_hist_edges"]
    steps = [r["step"] for r in hists]
    x_edges = np.array([0, *steps], dtype=float)
    a = ax[0, 0]
    mesh = a.pcolormesh(x_edges, np.asarray(edges, dtype=float), h.T, cmap="viridis", shading="flat")
    fig.colorbar(mesh, ax=a, label="share of draws")
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
