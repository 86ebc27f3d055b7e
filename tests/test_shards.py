"""Evaluation split over processes (diffusion_curriculum.shards): the chunk partition, per-chunk noise that does
not depend on which process makes a chunk, the ordered gather, and a 2-process (gloo) evaluation that equals a
single-process one of the same weights, each rank making its share only."""

from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

from conftest import TINY, run_gloo_ranks
from diffusion_curriculum import config, shards
from diffusion_curriculum.generate import sample
from diffusion_curriculum.process import DiscreteProcess
from diffusion_curriculum.training import Trainer, rundir


class Shrink(nn.Module):
    """A fixed, input-dependent denoiser (ε̂ = x_t / 2): enough to carry the noise through every step."""

    def forward(self, x_t, t):
        return 0.5 * x_t


@pytest.mark.parametrize("n,batch,world", [(24, 5, 2), (10, 4, 3), (3, 4, 2), (100, 7, 8)])
def test_the_chunks_of_the_ranks_partition_the_samples_evenly(n, batch, world):
    per_rank = [shards.chunks(n, batch, r, world) for r in range(world)]
    every = sorted((c for cs in per_rank for c in cs), key=lambda c: c.index)
    assert every == shards.chunks(n, batch)  # each chunk made once, by one rank
    assert [c.start for c in every] == list(range(0, n, batch)) and sum(c.size for c in every) == n
    counts = [len(cs) for cs in per_rank]
    assert max(counts) - min(counts) <= 1  # no rank has more than one chunk more than another


@pytest.mark.parametrize("method,eta", [("ddim", 1.0), ("ddpm", 0.0)])
def test_per_chunk_noise_does_not_depend_on_the_process_that_makes_a_chunk(method, eta):
    """Stochastic samplers (per-step noise too): the ranks' shares, put back in order, are the single-process
    samples, bit for bit."""
    proc = DiscreteProcess.cosine(T=20)
    kw = dict(method=method, eta=eta, seed=7, batch_size=4, seeding="per-chunk")
    kw["steps"] = 5 if method == "ddim" else None
    whole = sample(Shrink(), proc, 10, (3,), **kw)
    for world in (2, 3):
        parts = {r: sample(Shrink(), proc, 10, (3,), shard=(r, world), **kw) for r in range(world)}
        rebuilt = torch.empty_like(whole)
        for r, part in parts.items():
            at = 0
            for c in shards.chunks(10, 4, r, world):
                rebuilt[c.start : c.start + c.size] = part[at : at + c.size]
                at += c.size
            assert at == part.shape[0]
        assert torch.equal(rebuilt, whole)
    stream = sample(Shrink(), proc, 10, (3,), **{**kw, "seeding": "stream"})
    assert torch.equal(stream[:4], whole[:4])  # chunk 0 keeps the seed itself: the stream's first chunk
    assert not torch.equal(stream[4:], whole[4:])  # later chunks: their own generators


def test_sharding_needs_per_chunk_noise_and_a_valid_rank():
    proc = DiscreteProcess.cosine(T=20)
    with pytest.raises(ValueError, match="shard needs seeding='per-chunk'"):
        sample(Shrink(), proc, 4, (3,), steps=2, shard=(0, 2))
    with pytest.raises(ValueError, match="0 <= rank < world"):
        sample(Shrink(), proc, 4, (3,), steps=2, seeding="per-chunk", shard=(2, 2))
    with pytest.raises(ValueError, match="seeding='nope' is not known"):
        sample(Shrink(), proc, 4, (3,), steps=2, seeding="nope")
    empty = sample(Shrink(), proc, 4, (3,), steps=2, seeding="per-chunk", batch_size=4, shard=(1, 2))
    assert empty.shape == (0, 3)  # fewer chunks than ranks: this rank makes none


def test_gather_puts_every_ranks_chunks_back_in_order():
    n, batch = 11, 3

    def body(rank, world):
        mine = torch.cat(
            [torch.arange(c.start, c.start + c.size) for c in shards.chunks(n, batch, rank, world)]
        )
        got = shards.gather_chunks(mine.float()[:, None], n, batch, rank, world)
        return None if got is None else got.flatten().tolist()

    assert run_gloo_ranks(body) == [list(map(float, range(n))), None]


def test_a_run_saved_before_the_seeding_existed_keeps_its_stream(tmp_path):
    cfg = config.resolve(overrides=TINY)
    old = {**cfg, "eval": {k: v for k, v in cfg["eval"].items() if k != "seeding"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert cfg["eval"]["seeding"] == "per-chunk"
    assert rundir.load_config(tmp_path)["eval"]["seeding"] == "stream"
    assert rundir.with_legacy_eval(cfg, tmp_path)["eval"]["seeding"] == "stream"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))  # a run of today keeps its own choice
    assert rundir.load_config(tmp_path)["eval"]["seeding"] == "per-chunk"
    assert rundir.with_legacy_eval(cfg, tmp_path) is cfg


# 22 samples in chunks of 5 (5, 5, 5, 5, 2): rank 0 makes chunks 0, 2, 4 (12 samples), rank 1 chunks 1, 3 (10)
SHARDED = [*TINY, "device=cpu", "steps=10", "metrics.enabled=true", "eval.samples=22", "eval.batch_size=5"]


def test_a_sharded_evaluation_equals_a_single_process_one_and_each_rank_makes_its_share(tmp_path):
    """2 gloo processes evaluate a checkpoint: rank 0's samples and record (FD, precision, recall, validation
    loss) equal a single process's evaluation of the same weights, and each rank made its own chunks only."""
    cfg = config.resolve(overrides=SHARDED)
    trained = Trainer(cfg, tmp_path / "trained")
    trained.run()  # trains the feature net into the test cache too, so the ranks load it
    ckpts = sorted((tmp_path / "trained" / "checkpoints").glob("step_*"))

    def evaluation(t: Trainer) -> tuple[dict, torch.Tensor | None]:
        rundir.load_newest_ema(t.ema, ckpts, tmp_path / "trained")
        seen: list[torch.Tensor] = []
        t.eval_hooks.append(lambda tr, samples, step: seen.append(samples.clone()) or {})
        rec = t.evaluate()
        return rec, (seen[0] if seen else None)

    single_rec, single_samples = evaluation(Trainer(cfg, tmp_path / "single"))
    assert single_samples.shape[0] == 22

    def body(rank, world):
        t = Trainer(cfg, tmp_path / "sharded")
        rec, samples = evaluation(t)
        return rec, None if samples is None else samples.numpy(), t.eval_share  # numpy: sent by value

    (rec0, samples0, share0), (rec1, samples1, share1) = run_gloo_ranks(body)
    assert (share0, share1) == (12, 10)  # neither rank makes the other's chunks
    assert rec1 == {} and samples1 is None
    assert torch.equal(torch.from_numpy(samples0), single_samples)
    measured = [k for k in single_rec if k not in ("step",) and not k.startswith("t_hist")]
    assert {"fd", "precision", "recall", "val_loss"} <= set(measured)
    assert {k: rec0[k] for k in measured} == {k: single_rec[k] for k in measured}
