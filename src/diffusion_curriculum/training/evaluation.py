"""The trainer's evaluation: samples from the EMA model, split over the processes, and the record they are
measured in (a mixin of :class:`~.trainer.Trainer`, which holds the state it reads).

Every rank makes its share of ``eval.samples`` (:mod:`diffusion_curriculum.shards`: whole chunks of
``eval.batch_size``, each with its own noise generator on the device, under the training step's autocast), the
shares are gathered on rank 0 in order, and rank 0 measures them (the metrics, the validation loss, the hooks)
and writes the record. The samples are those of a single process on the same device type, whatever the number
of processes. A run evaluated with ``eval.seeding: stream`` (one CPU noise stream, as before the choice existed)
is sampled by rank 0 alone.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import generate, noise_levels, plots, shards, timesteps, viz
from . import conditioning

#: samples shown in a grid PNG (image data; 2-D points are all plotted)
GRID = 64


class Evaluation:
    """:meth:`evaluate` and the parts of it (mixed into the :class:`~.trainer.Trainer`)."""

    @torch.no_grad()
    def eval_loss(self, n: int = 512) -> float:
        """The EMA model's mean denoising loss on a fixed batch with fixed t and noise (comparable across
        steps and runs with the same seed)."""
        g = torch.Generator().manual_seed(self.cfg["eval"]["seed"])
        x0 = self.dataset.rows(slice(0, n)).to(self.device)
        t = timesteps.build("uniform", self.process).sample(x0.shape[0], device=self.device, generator=g).t
        noise = torch.randn(x0.shape, generator=g).to(self.device)
        y = self.dataset.labels[:n].to(self.device) if self.label_dropout else None  # conditional: its labels
        return float(self.loss.error(self.ema, x0, noise, t, reduce="mean", labels=y))

    @torch.no_grad()
    def generate(self, n: int | None = None, shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
        """``n`` samples (default ``eval.samples``) from the EMA model with the run's evaluation sampler, seed and
        seeding, under the training step's autocast; x̂0 is clipped to :attr:`clip` (``eval.clip``: the data's
        range by default, none for 2-D points). ``shard=(rank, world)``: only that rank's chunks of them
        (:func:`~diffusion_curriculum.shards.chunks`; needs ``eval.seeding: per-chunk``)."""
        ec = self.cfg["eval"]
        n, shape = n or ec["samples"], self.dataset.shape
        kw = {k: ec[k] for k in ("method", "eta", "seed", "batch_size", "seeding")} | {"clip_x0": self.clip}
        kw["steps"] = generate.config_steps(self.process, ec["method"], ec["steps"])
        kw |= conditioning.eval_labels(self.label_dropout, n, ec["guidance"])  # class-balanced, guided
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return generate.sample(
                self.ema,
                self.process,
                n,
                shape,
                prediction=self.cfg["prediction"],
                device=self.device,
                shard=shard,
                **kw,
            ).float()

    def _eval_sample_count(self) -> int:
        """``eval.samples`` when something measures them (quality metrics, an eval hook, or 2-D points, whose plot
        shows them all); else only the grid's :data:`GRID` images (generating 1000 to show 64 doubled short runs)."""
        n = self.cfg["eval"]["samples"]
        measured = self.cfg["metrics"]["enabled"] or self.eval_hooks or self.dataset.kind == "points"
        return n if measured else min(n, GRID)

    def _eval_samples(self, n: int) -> torch.Tensor | None:
        """The evaluation's ``n`` samples on rank 0 (``None`` on the others): each rank makes its share and rank
        0 gathers them, or, under ``eval.seeding: stream``, rank 0 makes them all. :attr:`eval_share` is how
        many this rank made."""
        ec = self.cfg["eval"]
        if self.world > 1 and ec["seeding"] == "per-chunk":
            mine = self.generate(n, shard=(self.rank, self.world))
            self.eval_share = mine.shape[0]
            return shards.gather_chunks(mine, n, ec["batch_size"], self.rank, self.world)
        if self.rank != 0:
            self.eval_share = 0
            return None
        samples = self.generate(n)
        self.eval_share = samples.shape[0]
        return samples

    def evaluate(self) -> dict[str, Any]:
        """Sample, measure the EMA model, log the record (with the noise-level histogram since the last
        evaluation) and return it. A collective: every rank makes its share of the samples; rank 0 measures and
        logs them and returns the record (the others return ``{}``); the histogram sums every rank's draws."""
        self._eval_step = self.step
        if self.world > 1:
            torch.distributed.all_reduce(self.histogram.counts)
            if self.rank != 0:
                self.histogram.counts.zero_()
        n = self._eval_sample_count()
        if self.rank == 0:
            self.say(f"evaluating at step {self.step} ({n} samples)...")
        samples = self._eval_samples(n)
        if self.rank != 0:
            return {}
        shown = samples if self.dataset.kind == "points" else samples[:GRID]
        self.samples_path = self.rundir.save_samples(shown, f"step_{self.step:08d}")  # for the trackers
        rec: dict[str, Any] = {"step": self.step, "eval_loss": self.eval_loss()}
        rec.update(self.validator(self.ema))
        for hook in self.hooks:
            rec.update(hook.on_eval(self, samples, self.step))
        for fn in self.eval_hooks:
            rec.update(fn(self, samples, self.step))
        self.last_eval = dict(rec)
        rec.update(self.histogram.record())
        self._log(rec)
        records = self.rundir.read_metrics()
        plots.timestep_plots(
            records, self.out / "timesteps.png", title=f"noise levels drawn ({self.sampler.name})"
        )
        edges, unit = noise_levels.bucket_edges(self.process, self.cfg["eval"]["val_buckets"])
        viz.validation_plot(records, self.out / "val_loss.png", edges, unit)
        return rec
