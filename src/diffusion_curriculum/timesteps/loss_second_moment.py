"""Loss-second-moment importance sampling of timesteps.

Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models", §3.3 (importance sampling of
L_vlb): sample t with p_t ∝ √E[L_t²], estimated from a history of the last 10 losses seen at each t, drawing
uniformly until every t has a full history, and weight each sample by 1/(T·p_t) so the objective stays
unbiased: E_{t∼p}[L_t/(T p_t)] = (1/T) Σ_t L_t. As in their released sampler the density is mixed with a
small uniform share (0.1 %) so no t is starved.
"""

from __future__ import annotations

import torch

from .. import noise_levels
from .base import TimestepSampler, check_param, is_int, is_number, register


@register
class LossSecondMoment(TimestepSampler):
    """p(t) ∝ √(mean of the last ``history`` squared losses at t) (Nichol & Dhariwal 2021, §3.3).

    Parameters
    ----------
    history:
        losses kept per timestep (default 10).
    uniform_prob:
        share of the uniform density mixed in, p ← p·(1 − uniform_prob) + uniform_prob/T (default 0.001).
    buckets:
        flow processes only: the number K of equal buckets of t that take the place of the T timesteps
        (:func:`~diffusion_curriculum.noise_levels.bucket`; default 1000, as diffusers' 1000 training timesteps)
        [reconstruction]. A bucket is drawn from p and t is uniform inside it; before warm-up t ~ U(0, 1) (the
        ``uniform`` sampler's draw). Everything said below of "t" and "T" holds for the buckets and K.

    Until every t holds ``history`` losses the draw is exactly ``torch.randint(0, T, (B,), generator=g)``
    with weight 1. Afterwards t ~ p by ``torch.multinomial`` and the weight is 1/(T·p(t)), whose mean under
    p is exactly 1.

    **History** (tensor ``history`` [T, H] float64 and ``counts`` [T] int64): each row is a ring buffer; the
    n-th loss ever observed at t (n counted from 0) is stored in slot n mod H, and ``counts[t]`` is the number
    of losses ever observed at t (not capped), so a row always holds the last min(counts[t], H) losses at t
    (in ring order, not chronological order). The update is vectorised: occurrences of the same t within a
    batch are ranked in batch order (a stable sort), and all of them are written in that order — only the
    last H occurrences of a t in a batch are kept, exactly what writing them one by one would leave. Losses
    that are not finite are dropped (they would otherwise poison the estimate).

    **Lag** (:mod:`~.observations`): ``observe`` stacks the batch's timesteps and losses on their device (no
    host read) and the history takes them a few steps later, in order, from a non-blocking host copy.

    **Distributed**: with more than one rank, the timesteps and losses of every rank are gathered in one
    collective per observation window (``all_gather`` of float64 [window, 2, B], on the loss's device), in rank
    order, so every rank holds the same history and draws from the same density. Every rank must pass the
    same batch size B (use ``drop_last`` in the data loader).
    """

    name = "loss-second-moment"
    supports = ("discrete", "flow")
    reduce = "gather"

    def __init__(
        self,
        process,
        total_steps: int | None = None,
        history: int = 10,
        uniform_prob: float = 0.001,
        buckets: int | None = None,
    ):
        super().__init__(process, total_steps)
        check_param(
            "buckets",
            buckets,
            buckets is None or (self.kind == "flow" and is_int(buckets) and buckets >= 1),
            "an integer >= 1 on a flow process, or None (a discrete process has one history per timestep)",
        )
        check_param("history", history, is_int(history) and history >= 1, "an integer >= 1")
        check_param(
            "uniform_prob",
            uniform_prob,
            is_number(uniform_prob) and 0 <= uniform_prob <= 1,
            "a number in [0, 1]",
        )
        self.T = (1000 if buckets is None else int(buckets)) if self.kind == "flow" else int(process.T)
        self.history_len = int(history)
        self.uniform_prob = float(uniform_prob)
        self.history = torch.zeros(self.T, self.history_len, dtype=torch.float64)
        self.counts = torch.zeros(self.T, dtype=torch.long)
        self._p: torch.Tensor | None = None  # cached density, reset whenever the history changes

    # -- the density ---------------------------------------------------------------------------------
    def warm(self) -> bool:
        """Whether every t holds a full history (before that, draws are uniform)."""
        return bool((self.counts >= self.history_len).all())

    def probs(self) -> torch.Tensor:
        """The current sampling density p(t) (float64, length T): uniform until warm, then the mixed
        √E[L²] density of Nichol & Dhariwal 2021, §3.3."""
        if not self.warm():
            return torch.full((self.T,), 1.0 / self.T, dtype=torch.float64)
        if self._p is None:
            p = self.history.pow(2).mean(dim=1).sqrt()
            total = p.sum()
            if not torch.isfinite(total) or total <= 0:  # all losses zero: nothing to prefer
                p = torch.full((self.T,), 1.0 / self.T, dtype=torch.float64)
            else:
                p = p / total
            self._p = p * (1.0 - self.uniform_prob) + self.uniform_prob / self.T
        return self._p

    def _draw(self, batch_size, generator):
        flow = self.kind == "flow"
        if not self.warm():
            if flow:
                return self.process.clamp(torch.rand(batch_size, generator=generator)), None
            return torch.randint(0, self.T, (batch_size,), generator=generator), None
        p = self.probs()
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        w = (1.0 / (self.T * p[t])).float()
        if flow:  # t is a bucket; the time is uniform inside it
            u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
            return self.process.clamp((t.double() + u) / self.T).float(), w
        return t, w

    # -- the history -----------------------------------------------------------------------------------
    def _observe(self, t, per_sample_loss):
        loss = per_sample_loss.detach().reshape(-1).to(torch.float64)
        if self.kind == "flow":
            if not t.is_floating_point():
                raise ValueError(
                    f"the loss-second-moment sampler needs float times on a flow process, got {t.dtype}"
                )
            t = noise_levels.bucket(self.process, t.detach(), self.T)
        elif t.is_floating_point():
            raise ValueError(f"the loss-second-moment sampler needs integer timesteps, got dtype {t.dtype}")
        stats = torch.stack([t.detach().reshape(-1).to(loss.device, torch.float64), loss])
        for host, _, _ in self._lagged_observations(stats):
            self.update(host[0].round().long(), host[1])

    def update(self, t: torch.Tensor, loss: torch.Tensor) -> None:
        """Append losses to the per-t histories, vectorised (see the class docstring for the ordering).

        Does not advance the step counter (``observe`` does, and gathers across ranks first).
        """
        ok = torch.isfinite(loss)
        t, loss = t[ok], loss[ok]
        if t.numel() == 0:
            return
        if int(t.min()) < 0 or int(t.max()) >= self.T:
            raise ValueError(f"timesteps must lie in [0, {self.T}), got [{int(t.min())}, {int(t.max())}]")
        n = t.numel()
        H = self.history_len
        # rank of each occurrence among the equal t of this batch, in batch order (stable sort)
        order = torch.sort(t, stable=True).indices
        ts = t[order]
        new_group = torch.ones(n, dtype=torch.bool)
        new_group[1:] = ts[1:] != ts[:-1]
        group_start = torch.cummax(
            torch.where(new_group, torch.arange(n), torch.zeros(n, dtype=torch.long)), 0
        )
        rank_sorted = torch.arange(n) - group_start.values
        rank = torch.empty_like(rank_sorted)
        rank[order] = rank_sorted
        in_batch = torch.bincount(t, minlength=self.T)
        keep = rank >= in_batch[t] - H  # only the last H occurrences of a t survive; their slots are distinct
        tk, rk = t[keep], rank[keep]
        slot = (self.counts[tk] + rk) % H
        self.history[tk, slot] = loss[keep]
        self.counts += in_batch
        self._p = None

    # -- state -------------------------------------------------------------------------------------------
    def _state(self):
        return {"history": self.history.clone(), "counts": self.counts.clone()}

    def _load_state(self, state):
        h = torch.as_tensor(state["history"], dtype=torch.float64)
        c = torch.as_tensor(state["counts"], dtype=torch.long)
        if h.shape != self.history.shape or c.shape != self.counts.shape:
            raise ValueError(
                f"loss-second-moment state has history {tuple(h.shape)} and counts {tuple(c.shape)}; this sampler "
                f"needs {tuple(self.history.shape)} and {tuple(self.counts.shape)} (same T and history)"
            )
        self.history = h.clone()
        self.counts = c.clone()
        self._p = None

    def status(self):
        """``{"warm": bool}``, and until warm how many of the T timesteps (buckets) hold a full history:
        the draws stay uniform until all do (at batch 64 and T = 1000 about step 340 for ``history`` 10)."""
        if self.warm():
            return {"warm": True}
        return {"warm": False, "full": f"{int((self.counts >= self.history_len).sum())}/{self.T}"}
