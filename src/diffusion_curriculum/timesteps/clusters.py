"""Noise-level clusterings for the DDC curriculum (Kim et al., "Denoising Task Difficulty-based Curriculum for
Training Diffusion Models", arXiv 2403.10348; docs/methods.md, "DDC").

Every function returns the N clusters as a list ordered C_1 (cleanest, hardest, smallest t) … C_N (noisiest,
easiest):

* discrete processes — half-open integer intervals ``(lo, hi)`` that cover ``[0, T)`` contiguously
  (``C_1[0] == 0``, ``C_i[1] == C_{i+1}[0]``, ``C_N[1] == T``), none empty;
* EDM processes — intervals ``(ln_sigma_lo, ln_sigma_hi)`` of ln σ, contiguous, from −∞ to +∞.

Clusterings: :func:`uniform` (equal numbers of steps), :func:`snr` (the exact SNR-deviation dynamic programme of
the authors' ANT work), :func:`log_snr` (equal widths of log-SNR) and :func:`quantile` (equal probability mass
of EDM's training log-normal); on a flow process ``uniform`` (equal widths of t, :func:`flow_uniform`) and
``log-snr`` (equal widths of the process's log-SNR, :func:`flow_log_snr`). :func:`build` dispatches on a name.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from scipy.stats import norm
from torch import Tensor

from ..errors import suggest
from ..process import kind_of
from .base import is_int

#: the clustering names :func:`build` accepts, and the process kinds each is defined on
KINDS: dict[str, tuple[str, ...]] = {
    "uniform": ("discrete", "flow"),
    "snr": ("discrete",),
    "log-snr": ("discrete", "flow"),
    "quantile": ("continuous",),
}

Interval = tuple[int, int]


def _check_n(N, T: int | None = None) -> None:
    """Raise ``ValueError`` naming ``clusters`` unless 1 ≤ N (≤ T for a discrete process)."""
    if T is None:
        if not (is_int(N) and N >= 1):
            raise ValueError(f"sampler parameter clusters={N!r} is invalid; allowed: an integer >= 1")
    elif not (is_int(N) and 1 <= N <= T):
        raise ValueError(
            f"sampler parameter clusters={N!r} is invalid; allowed: an integer from 1 to T={T} "
            "(every cluster needs at least one timestep)"
        )


def _from_boundaries(b) -> list[Interval]:
    """Boundaries 0 = b_0 < b_1 < … < b_N = T → ``[(b_0, b_1), …, (b_{N−1}, b_N)]`` as Python ints."""
    b = [int(x) for x in b]
    return list(zip(b[:-1], b[1:]))


def _discrete(process, name: str):
    if getattr(process, "continuous", False) or not hasattr(process, "alphas_cumprod"):
        raise ValueError(
            f"sampler parameter clustering={name!r} needs a discrete process, got {process!r}; "
            "allowed for an EDM process: quantile"
        )
    return process.alphas_cumprod.detach().cpu().double().numpy()


def uniform(T: int, N: int) -> list[Interval]:
    """Equal numbers of steps: C_i = [⌊(i−1)T/N⌋, ⌊iT/N⌋), i = 1 … N (docs/methods.md, "DDC", ``uniform``).

    T=1000, N=20: C_1 = [0, 50), …, C_20 = [950, 1000).
    """
    if not (is_int(T) and T >= 1):
        raise ValueError(f"T={T!r} is invalid; allowed: an integer >= 1")
    _check_n(N, T)
    return _from_boundaries([(i * T) // N for i in range(N + 1)])


def interval_costs(snr_t: np.ndarray) -> np.ndarray:
    """The DP's per-interval cost: ``cost[lo, hi] = Σ_{t∈[lo,hi)} |SNR(t) − SNR(c)|`` for every 0 ≤ lo < hi ≤ T,
    ``+inf`` where hi ≤ lo; shape [T, T+1], float64.

    The centre is the middle index c = lo + (hi − lo − 1) // 2 (the lower middle for an even count). SNR is
    non-increasing in t, so every term left of c is SNR(t) − SNR(c) ≥ 0 and every term right of it
    SNR(c) − SNR(t) ≥ 0, and each side is a difference of prefix sums P[k] = Σ_{t<k} SNR(t):
    left = P[c] − P[lo] − (c − lo)·SNR(c), right = (hi − 1 − c)·SNR(c) − (P[hi] − P[c+1]). Their sum is
    P[c] + P[c+1] − P[lo] − P[hi] + SNR(c)·((hi − lo − 1) mod 2), because (hi − 1 − c) − (c − lo) is the
    parity of hi − lo − 1.
    """
    s = np.asarray(snr_t, dtype=np.float64)
    T = s.shape[0]
    P = np.concatenate([[0.0], np.cumsum(s)])
    lo = np.arange(T)[:, None]
    hi = np.arange(T + 1)[None, :]
    n1 = np.maximum(hi - lo - 1, 0)  # points in the interval minus one (0 where it is empty)
    c = lo + n1 // 2
    cost = P[c]
    cost += P[c + 1]
    cost -= P[:T, None]
    cost -= P[None, :]
    cost += np.where(n1 & 1, s[c], 0.0)
    del c, n1
    # rounding in the prefix sums can leave a tiny negative where the true value is 0
    np.maximum(cost, 0.0, out=cost)
    cost[hi <= lo] = np.inf
    return cost


def partition_cost(snr_t: np.ndarray, intervals: list[Interval]) -> float:
    """Σ over clusters of Σ_{t∈cluster} |SNR(t) − SNR(centre)|, computed directly (no prefix sums)."""
    s = np.asarray(snr_t, dtype=np.float64)
    total = 0.0
    for lo, hi in intervals:
        c = lo + (hi - lo - 1) // 2
        total += float(np.abs(s[lo:hi] - s[c]).sum())
    return total


def snr_partition(snr_t: np.ndarray, N: int) -> list[Interval]:
    """The exact minimiser of :func:`partition_cost` over all partitions of ``[0, T)`` into N non-empty contiguous
    intervals (dynamic programme, O(N·T²) vectorised with numpy; ties go to the smallest boundary).

    ``D[k, j]`` = least cost of splitting [0, j) into k intervals; D[1, j] = cost[0, j] and
    D[k, j] = min_{k−1 ≤ i < j} D[k−1, i] + cost[i, j]. Backtracking the argmins gives the boundaries.
    Memory is O(T²): a few [T, T+1] float64 arrays (T=1000: about 0.1 s and 8 MB each; T=4000: a few seconds
    and about 1 GB at the peak).
    """
    s = np.asarray(snr_t, dtype=np.float64)
    T = s.shape[0]
    _check_n(N, T)
    cost = interval_costs(s)  # [T, T+1]: row = lo, column = hi
    D = cost[0].copy()  # D[1, j], j = 0 … T (D[1, 0] = inf)
    arg = np.zeros((N + 1, T + 1), dtype=np.int64)
    cand = np.empty_like(cost) if N > 1 else cost
    cols = np.arange(T + 1)
    for k in range(2, N + 1):
        # cand[i, j] = D[k−1, i] + cost[i, j]; D[k−1, i] is inf for i < k−1, cost is inf for i ≥ j
        np.add(D[:T, None], cost, out=cand)
        best = np.argmin(cand, axis=0)
        D = cand[best, cols]
        arg[k] = best
    b = [T]
    for k in range(N, 1, -1):
        b.append(int(arg[k, b[-1]]))
    b.append(0)
    return _from_boundaries(b[::-1])


@functools.lru_cache(maxsize=32)
def _snr_cached(ac_bytes: bytes, N: int) -> tuple[Interval, ...]:
    ac = np.frombuffer(ac_bytes, dtype=np.float64)
    return tuple(snr_partition(ac / (1.0 - ac), N))


def snr(process, N: int) -> list[Interval]:
    """SNR-based interval clustering (docs/methods.md, "DDC", ``snr``; from the same authors' ANT work): the boundaries
    0 = b_0 < … < b_N = T minimising Σ_clusters Σ_{t∈cluster} |SNR(t) − SNR(centre)|, centre = the middle index
    lo + (hi − lo − 1)//2, SNR(t) = ᾱ_t/(1 − ᾱ_t) in float64; solved exactly by :func:`snr_partition` and cached
    per (ᾱ table, N). We do not shift the emitted bounds as the authors' code does: the DP's own partition is the
    definition.

    The result is strongly skewed: SNR changes by orders of magnitude at small t and hardly at all near T, so
    almost every step falls in the noisiest cluster (linear β, T=1000, N=5: C_5 = [18, 1000); N=20: C_20 = [263, 1000)).
    """
    ac = _discrete(process, "snr")
    _check_n(N, ac.shape[0])
    return list(_snr_cached(np.ascontiguousarray(ac, dtype=np.float64).tobytes(), N))


def log_snr(process, N: int) -> list[Interval]:
    """Equal widths of log-SNR (docs/methods.md, "DDC", ``log-snr``).

    With λ_t = ln SNR(t) (non-increasing) and edges e_k = λ_0 − k·(λ_0 − λ_{T−1})/N, k = 0 … N, cluster C_i holds
    the steps with e_i ≤ λ_t < e_{i−1} (a step exactly on an edge goes to the noisier cluster), so boundary
    b_k = #{t : λ_t > e_k}.

    Degenerate cases, so that the result is always N non-empty contiguous clusters: an edge that falls between
    no two steps would leave a cluster empty; then the boundaries are nudged the least needed — each b_k is
    first clipped into [k, T − N + k] and then raised to b_{k−1} + 1 where it does not exceed its predecessor —
    so an empty cluster takes the single next-noisier step (and its neighbours shift by one). A constant SNR
    table (λ_0 = λ_{T−1}) has no log-SNR width to split and gives :func:`uniform` clusters.
    """
    ac = _discrete(process, "log-snr")
    T = ac.shape[0]
    _check_n(N, T)
    lam = np.log(ac) - np.log1p(-ac)
    lmax, lmin = float(lam[0]), float(lam[-1])
    if not lmax > lmin:
        return uniform(T, N)
    k = np.arange(1, N)
    edges = lmax - k * (lmax - lmin) / N
    # λ is non-increasing: #{t : λ_t > e} = position of e in the ascending array −λ
    b = np.searchsorted(-lam, -edges, side="left")
    b = np.clip(b, k, T - N + k)
    out = [0]
    for x in b:
        out.append(max(int(x), out[-1] + 1))
    out.append(T)
    return _from_boundaries(out)


def quantile(process, N: int) -> list[tuple[float, float]]:
    """Equal-mass clusters of EDM's training density (docs/methods.md, "DDC", ``quantile``): C_i holds ln σ between the
    (i−1)/N and i/N quantiles of N(P_mean, P_std²) (Karras et al. 2022, Table 1).

    The outer bounds are −∞ (C_1) and +∞ (C_N), not ln sigma_min / ln sigma_max: the training log-normal itself is
    not clipped (the ``lognormal`` sampler draws from all of it), so with open ends every cluster carries exactly
    1/N of its mass and the union of all clusters is the whole training density.
    """
    if not getattr(process, "continuous", False):
        raise ValueError(
            f"sampler parameter clustering='quantile' needs an EDM (continuous) process, got {process!r}; "
            "allowed for a discrete process: uniform, snr, log-snr"
        )
    _check_n(N)
    q = norm.ppf(np.arange(N + 1) / N, loc=process.P_mean, scale=process.P_std)
    q[0], q[-1] = -np.inf, np.inf
    return [(float(a), float(b)) for a, b in zip(q[:-1], q[1:])]


def flow_uniform(N: int) -> list[tuple[float, float]]:
    """Equal widths of the flow time: C_i = [(i−1)/N, i/N) (docs/methods.md, "DDC"; the ``uniform`` clustering
    of a flow process, t being its sampler axis as t/T is a discrete one's)."""
    _check_n(N)
    return [(i / N, (i + 1) / N) for i in range(N)]


def flow_log_snr(process, N: int) -> list[tuple[float, float]]:
    """Equal widths of log-SNR on a flow process (docs/methods.md, "DDC", ``log-snr``): λ(t) = 2 ln((1 − t')/t')
    between its values at the clamp, λ(1 − eps) … λ(eps) (:meth:`FlowProcess.log_snr_range`), cut into N equal
    widths; each edge λ_k is mapped back to the time t_k with λ(t_k) = λ_k (t' = sigmoid(−λ/2), then the inverse
    shift). The outer bounds are 0 and 1, so the clusters cover the whole axis; cleanest (largest λ) first.
    """
    _check_n(N)
    lo, hi = process.log_snr_range()
    edges = hi - (hi - lo) * torch.arange(1, N, dtype=torch.float64) / N
    t = process.unshifted(torch.sigmoid(-edges / 2)).tolist()
    b = [0.0, *t, 1.0]
    return [(float(a), float(c)) for a, c in zip(b[:-1], b[1:])]


#: the largest float64 below 1 and the smallest normal one — keep the inverse normal CDF finite
_P_MAX = 1.0 - 2.0**-53
_P_MIN = 2.0**-1022


def truncated_lognormal(P_mean: float, P_std: float, lo: Tensor, hi: Tensor, generator) -> Tensor:
    """σ with ln σ ~ N(P_mean, P_std²) truncated to [lo, hi] (per-sample float64 bounds, shape [B]), by inverse
    CDF in float64; float32 out. Draws one ``rand`` of B numbers from ``generator``."""
    pa = torch.special.ndtr((lo - P_mean) / P_std)
    pb = torch.special.ndtr((hi - P_mean) / P_std)
    u = torch.rand(lo.shape[0], generator=generator, dtype=torch.float64, device=lo.device)
    p = (pa + u * (pb - pa)).clamp(_P_MIN, _P_MAX)
    ls = (P_mean + P_std * torch.special.ndtri(p)).clamp(lo, hi)
    return ls.exp().float()


def build(kind: str, process, N: int) -> list:
    """The N clusters of ``process`` by clustering name: ``uniform`` | ``snr`` | ``log-snr`` (discrete),
    ``quantile`` (EDM) or ``uniform`` | ``log-snr`` (flow). Raises ``ValueError`` naming ``clustering`` or
    ``clusters`` on a bad name, a name that does not fit the process, or a bad N (N < 1, N > T)."""
    if kind not in KINDS:
        raise ValueError(
            f"sampler parameter clustering={kind!r} is invalid{suggest(kind, KINDS)}; "
            f"allowed: {', '.join(KINDS)}"
        )
    pkind = kind_of(process)
    if pkind not in KINDS[kind]:
        names = {"discrete": "a discrete", "continuous": "an EDM", "flow": "a flow"}
        needs = " or ".join(f"{names[k]} process" for k in KINDS[kind])
        fits = ", ".join(k for k, ks in KINDS.items() if pkind in ks)
        raise ValueError(
            f"sampler parameter clustering={kind!r} needs {needs}, got {process!r}; "
            f"allowed for {names[pkind]} process: {fits}"
        )
    if pkind == "flow":
        return flow_uniform(N) if kind == "uniform" else flow_log_snr(process, N)
    if kind == "uniform":
        _discrete(process, kind)
        return uniform(process.T, N)
    if kind == "snr":
        return snr(process, N)
    if kind == "log-snr":
        return log_snr(process, N)
    return quantile(process, N)
