"""Relative entropy between consecutive noised marginals, D_KL(p_{t−1} ‖ p_t).

Kim et al. 2024, "Denoising Task Difficulty-based Curriculum for Training Diffusion Models" (arXiv 2403.10348),
argue that denoising is harder at small t partly because consecutive marginals differ more there; docs/methods.md
("Analyses", relative entropy between consecutive marginals) describes the estimate implemented here.

For a dataset {x_i} of M points the marginal of a variance-preserving process at step t is the mixture

    p_t(x) = (1/M) Σ_i N(x; √ᾱ_t x_i, (1 − ᾱ_t) I)                                   (Ho et al. 2020, eq. 4)

and D_KL(p_{t−1} ‖ p_t) = E_{x∼p_{t−1}}[log p_{t−1}(x) − log p_t(x)] is estimated by Monte Carlo: draw x ∼ p_{t−1}
(pick i uniformly, add noise), evaluate both mixture log-densities *exactly* by a chunked log-sum-exp over the
dataset in float64, and average; the standard error is the sample standard deviation / √n. By default the
Gaussian fit's log-ratio (below) serves as a control variate (unbiased; see :func:`mixture_kl`).

Reference curve (closed form): replace the data by a Gaussian N(μ, Σ) with the data's mean and (1/M) covariance;
then p_t = N(a_t μ, a_t² Σ + s_t² I) with a_t² = ᾱ_t, s_t² = 1 − ᾱ_t. Both covariances share Σ's eigenvectors
(Σ = U diag(λ) Uᵀ), so with c_k = a_{t−1}² λ_k + s_{t−1}², d_k = a_t² λ_k + s_t² and m = (a_{t−1} − a_t) Uᵀμ,

    D_KL = ½ Σ_k [ (r_k − 1) − log r_k + m_k² / d_k ],   r_k = c_k / d_k,

evaluated as (r−1) − log1p(r−1) with r − 1 = (c_k − d_k)/d_k, which keeps precision when consecutive steps are
nearly equal (the standard Gaussian KL, e.g. Bishop 2006 / any textbook, specialised to a shared eigenbasis).

Continuous (EDM) processes: p_σ = data + σ n, i.e. a = 1, s = σ. There is no step index, so the analysis uses a
geometric grid σ_1 < … < σ_K between σ_min and σ_max and reports D_KL(p_{σ_{k−1}} ‖ p_{σ_k}) between
*consecutive grid points* (row k; its ``t`` column is the grid index k and ``sigma`` / ``sigma_prev`` give the
levels). Values therefore depend on the grid spacing, as the discrete ones depend on the schedule's β_t.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import write_table

#: data rows per log-sum-exp chunk (memory: samples × CHUNK float64)
CHUNK = 4096


def _flat64(data: Tensor) -> Tensor:
    return torch.as_tensor(data).detach().reshape(len(data), -1).to(torch.float64).cpu()


def mixture_log_density(x: Tensor, data: Tensor, a: float, s2: float, chunk: int = CHUNK) -> Tensor:
    """log (1/M) Σ_i N(x; a·x_i, s2·I) for each row of ``x`` [n, D], exactly (float64, chunked log-sum-exp)."""
    x = x.to(torch.float64)
    n, d = x.shape
    m = data.shape[0]
    xx = (x * x).sum(1, keepdim=True)
    parts = []
    for lo in range(0, m, chunk):
        y = a * data[lo : lo + chunk]
        d2 = (xx - 2.0 * x @ y.T + (y * y).sum(1)[None, :]).clamp_min_(0.0)
        parts.append(torch.logsumexp(-0.5 * d2 / s2, dim=1))
    lse = torch.logsumexp(torch.stack(parts, 1), dim=1)
    return lse - math.log(m) - 0.5 * d * math.log(2.0 * math.pi * s2)


def gaussian_log_ratio(x: Tensor, fit, a2_prev: float, s2_prev: float, a2: float, s2: float) -> Tensor:
    """log N(x; a_prev μ, a_prev² Σ + s2_prev I) − log N(x; a μ, a² Σ + s2 I) per row of ``x``, in Σ's eigenbasis."""
    mu, lam, u = (torch.as_tensor(v, dtype=torch.float64) for v in fit)
    y = x.to(torch.float64) @ u
    m = u.T @ mu
    c = a2_prev * lam + s2_prev
    d = a2 * lam + s2
    q0 = ((y - math.sqrt(a2_prev) * m) ** 2 / c).sum(1)
    q1 = ((y - math.sqrt(a2) * m) ** 2 / d).sum(1)
    return -0.5 * (torch.log(c / d).sum() + q0 - q1)


def mixture_kl(
    data: Tensor,
    a2_prev: float,
    s2_prev: float,
    a2: float,
    s2: float,
    *,
    samples: int = 256,
    generator: torch.Generator | None = None,
    chunk: int = CHUNK,
    fit=None,
) -> tuple[float, float]:
    """Monte Carlo D_KL(p ‖ q) for p = (1/M) Σ N(a_prev x_i, s2_prev I), q = (1/M) Σ N(a x_i, s2 I).

    ``data`` is [M, D] float64; the signal scales are given squared (a2 = ᾱ). Returns (estimate, standard error).

    With ``fit`` (:func:`gaussian_fit` of the same ``data``) the Gaussian-fit log-ratio g(x) is used as a control
    variate: the estimate is mean(log p − log q − g) + D_KL(Gaussian fits). It stays unbiased because g is
    quadratic in x and p has exactly the fit's mean and covariance, so E_p[g] is the closed-form Gaussian KL; its
    variance is far smaller wherever the mixture is close to Gaussian (large t), where the plain estimate's
    noise (≈ √(2·KL/n)) would swamp the tiny KL.
    """
    m, d = data.shape
    idx = torch.randint(0, m, (samples,), generator=generator)
    z = torch.randn(samples, d, generator=generator, dtype=torch.float64)
    a_prev, a = math.sqrt(a2_prev), math.sqrt(a2)
    x = a_prev * data[idx] + math.sqrt(s2_prev) * z
    diff = mixture_log_density(x, data, a_prev, s2_prev, chunk) - mixture_log_density(x, data, a, s2, chunk)
    if fit is not None:
        diff = (
            diff
            - gaussian_log_ratio(x, fit, a2_prev, s2_prev, a2, s2)
            + gaussian_kl(fit, a2_prev, s2_prev, a2, s2)
        )
    stderr = float(diff.std(unbiased=True)) / math.sqrt(samples) if samples > 1 else float("nan")
    return float(diff.mean()), stderr


def gaussian_fit(data: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(μ, λ, U): the data's mean and the eigendecomposition of its (1/M) covariance, float64; λ clipped ≥ 0."""
    x = _flat64(data).numpy()
    mu = x.mean(0)
    xc = x - mu
    cov = xc.T @ xc / len(x)
    lam, u = np.linalg.eigh(cov)
    return mu, np.clip(lam, 0.0, None), u


def gaussian_kl(fit, a2_prev: float, s2_prev: float, a2: float, s2: float) -> float:
    """Closed-form D_KL(N(a_prev μ, a_prev² Σ + s2_prev I) ‖ N(a μ, a² Σ + s2 I)) in Σ's eigenbasis (module doc)."""
    mu, lam, u = fit
    d = a2 * lam + s2
    rm1 = ((a2_prev - a2) * lam + (s2_prev - s2)) / d  # r − 1 with r = c/d, c = a2_prev·λ + s2_prev
    m = (math.sqrt(a2_prev) - math.sqrt(a2)) * (u.T @ mu)
    return float(0.5 * np.sum(rm1 - np.log1p(rm1) + m * m / d))


def _levels(process, stride: int, sigmas: int) -> list[dict[str, Any]]:
    """The consecutive pairs to evaluate: (t, a2_prev, s2_prev, a2, s2) plus labels."""
    if not getattr(process, "continuous", False):
        ac = process.alphas_cumprod.to(torch.float64)
        out = []
        for t in range(1, process.T, stride):
            ap, at = float(ac[t - 1]), float(ac[t])
            out.append({"t": t, "pair": (ap, 1.0 - ap, at, 1.0 - at)})
        return out
    grid = np.geomspace(process.sigma_min, process.sigma_max, sigmas)
    return [
        {
            "t": k,
            "sigma_prev": float(grid[k - 1]),
            "sigma": float(grid[k]),
            "pair": (1.0, float(grid[k - 1]) ** 2, 1.0, float(grid[k]) ** 2),
        }
        for k in range(1, sigmas, stride)
    ]


def entropy_table(
    process,
    data: Tensor,
    *,
    stride: int = 10,
    samples_per_t: int = 256,
    subsample: int | None = 2000,
    seed: int = 0,
    sigmas: int = 100,
    control_variate: bool = True,
) -> list[dict[str, Any]]:
    """Rows ``{t, kl, kl_stderr, kl_gaussian}`` (plus ``sigma_prev``, ``sigma`` for EDM) for t = 1, 1+stride, …

    ``subsample``: use a seeded random subset of M points as the dataset (``None``: all). ``sigmas``: size of the
    σ grid for an EDM process (ignored otherwise). ``control_variate``: see :func:`mixture_kl`. Deterministic
    given ``seed``.
    """
    if stride < 1:
        raise ValueError(f"stride {stride} is invalid; allowed: a positive integer")
    if samples_per_t < 2:
        raise ValueError(f"samples_per_t {samples_per_t} is invalid; allowed: an integer ≥ 2")
    x = _flat64(data)
    g = torch.Generator().manual_seed(seed)
    if subsample is not None and subsample < len(x):
        x = x[torch.randperm(len(x), generator=g)[:subsample]]
    fit = gaussian_fit(x)
    rows = []
    for lv in _levels(process, stride, sigmas):
        pair = lv.pop("pair")
        kl, se = mixture_kl(
            x, *pair, samples=samples_per_t, generator=g, fit=fit if control_variate else None
        )
        rows.append({**lv, "kl": kl, "kl_stderr": se, "kl_gaussian": gaussian_kl(fit, *pair)})
    return rows


def nonpositive_note(rows: list[dict[str, Any]]) -> str | None:
    """A sentence about the Monte Carlo estimates that came out ≤ 0, or ``None`` when there are none.

    A KL divergence is ≥ 0, but its Monte Carlo estimate is a mean of log-ratios and can fall below 0 when the
    true value is smaller than its standard error (cheap settings: few ``samples_per_t``, large t where
    consecutive marginals are nearly equal). The table keeps the raw, unbiased estimates; the plot does not draw
    them as dips (see :func:`plot`)."""
    bad = [r["t"] for r in rows if not r["kl"] > 0]
    if not bad:
        return None
    shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
    return (
        f"{len(bad)} of {len(rows)} Monte Carlo KL estimates are <= 0 (t = {shown}): the true value there is "
        "below the estimate's noise; the plot marks them at their +2 stderr bound (an upper bound) and the table "
        "keeps the raw estimates; raise --samples-per-t for a tighter estimate"
    )


def plot(rows: list[dict[str, Any]], path: Path, *, continuous: bool = False, title: str = "") -> None:
    """KL vs t (or vs σ), Monte Carlo with ±2 stderr band and the Gaussian closed form, log y.

    An estimate ≤ 0 (Monte Carlo noise, see :func:`nonpositive_note`) cannot sit on a log axis: instead of a dip
    to a tiny floor it is left out of the line and drawn as a hollow ▽ at its +2 stderr bound, an upper bound
    of the true value, with the count in the legend; the band's lower edge is cut at the axis' bottom."""
    from .. import viz

    plt, fig, ax = viz.figure(size=(7.0, 4.2))
    a = ax[0, 0]
    xs = np.array([r["sigma"] if continuous else r["t"] for r in rows], dtype=float)
    kl = np.array([r["kl"] for r in rows])
    se = np.array([r["kl_stderr"] for r in rows])
    kg = np.array([r["kl_gaussian"] for r in rows])
    upper = kl + 2 * se
    shown = np.concatenate([kl, kg, upper])
    shown = shown[np.isfinite(shown) & (shown > 0)]
    floor = float(shown.min()) / 10 if shown.size else 1e-12
    pos = kl > 0
    a.plot(xs, np.where(pos, kl, np.nan), "o-", ms=3, label="empirical data (Monte Carlo)")
    a.fill_between(xs, np.clip(kl - 2 * se, floor, None), np.clip(upper, floor, None), alpha=0.2)
    if not pos.all():
        label = f"estimate <= 0 ({int((~pos).sum())}): noise; shown at its +2 stderr bound"
        a.plot(xs[~pos], np.clip(upper[~pos], floor, None), "v", mfc="none", color="C0", label=label)
    a.plot(xs, np.clip(kg, floor, None), "--", label="Gaussian fit (closed form)")
    a.set_yscale("log")
    a.set_ylim(bottom=floor)
    if continuous:
        a.set_xscale("log")
    a.set_xlabel("σ (grid point k; pair k−1 → k)" if continuous else "t")
    a.set_ylabel("D_KL(p_{t−1} ‖ p_t)" if not continuous else "D_KL(p_{σ_{k−1}} ‖ p_{σ_k})")
    a.set_title(title or "relative entropy between consecutive marginals")
    a.legend(fontsize=8)
    viz.save_figure(plt, fig, path)


def run(
    cfg: dict,
    out: str | Path,
    *,
    stride: int = 10,
    samples_per_t: int = 256,
    subsample: int | None = 2000,
    seed: int = 0,
    sigmas: int = 100,
) -> dict[str, Any]:
    """Build the config's process and dataset, compute :func:`entropy_table`, write ``entropy.csv``,
    ``entropy.json`` and ``entropy.png`` into ``out``; return the JSON content (its ``note`` is
    :func:`nonpositive_note`: estimates ≤ 0, or ``None``)."""
    from .. import data as data_mod
    from .. import process as process_mod
    from ..errors import ConfigError

    out = Path(out)
    pc = dict(cfg["process"])
    proc = process_mod.build(pc.pop("name"), **pc)
    if process_mod.kind_of(proc) == "flow":
        raise ConfigError(
            "analyze entropy needs a discrete or EDM process (its marginals are computed for x = a·x0 + s·ε on a "
            "timestep or σ grid); process.name=flow is not supported"
        )
    dc = dict(cfg["dataset"])
    dc.setdefault("seed", cfg["seed"])
    ds = data_mod.load(dc.pop("name"), **dc)
    t0 = time.perf_counter()
    rows = entropy_table(
        proc,
        ds.data,
        stride=stride,
        samples_per_t=samples_per_t,
        subsample=subsample,
        seed=seed,
        sigmas=sigmas,
    )
    meta = {
        "analysis": "entropy",
        "dataset": ds.name,
        "points": min(len(ds), subsample) if subsample else len(ds),
        "dim": int(np.prod(ds.shape)),
        "process": repr(proc),
        "stride": stride,
        "samples_per_t": samples_per_t,
        "seed": seed,
        "time_s": time.perf_counter() - t0,
        "note": nonpositive_note(rows),
    }
    write_table(out, "entropy", rows, meta)
    plot(rows, out / "entropy.png", continuous=bool(getattr(proc, "continuous", False)))
    return {**meta, "rows": rows}
