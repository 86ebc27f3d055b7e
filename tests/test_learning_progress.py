"""The learning-progress sampler: mass follows the falling loss, unbiasing weights, state, distributed agreement."""

import json

import numpy as np
import pytest
import torch

from conftest import run_gloo_ranks
from diffusion_curriculum import checkpoint, timesteps
from diffusion_curriculum.process import DiscreteProcess, EDMProcess


@pytest.fixture(autouse=True)
def _immediate(immediate_observations):
    """Observations applied at once: these tests check what the sampler decides, not when it reads."""


LIN = DiscreteProcess.linear(1000)


def g(seed):
    return torch.Generator().manual_seed(seed)


def feed(s, loss_of_bucket, steps, rng, noise=0.0):
    """Observe every bucket once per step (t at the bucket's start) with loss_of_bucket(step) (array [K])."""
    t = s.lo.long() if not s.process.continuous else None
    for step in range(steps):
        x = np.asarray(loss_of_bucket(step), dtype=float) * (1 + noise * rng.standard_normal(s.K))
        s.observe(t, torch.tensor(x))


def test_uniform_randint_until_every_bucket_has_data():
    s = timesteps.build("learning-progress", LIN, buckets=4)
    for j in range(3):
        d = s.sample(64, generator=g(j))
        assert torch.equal(d.t, torch.randint(0, 1000, (64,), generator=g(j)))
        assert torch.equal(d.weight, torch.ones(64))
        s.observe(torch.tensor([0, 300, 600]), torch.ones(3))  # bucket 3 = [750, 1000) never seen
    assert s.status() == {"warm": False} and not s.warm()
    s.observe(torch.tensor([999]), torch.ones(1))
    assert s.warm() and torch.equal(s.probs(), torch.full((4,), 0.25, dtype=torch.float64))  # no progress yet
    e = timesteps.build("learning-progress", EDMProcess(), buckets=4)
    ref = timesteps.build("lognormal", EDMProcess()).sample(50, generator=g(1)).t
    assert torch.equal(e.sample(50, generator=g(1)).t, ref)


def test_mass_moves_to_the_falling_bucket_and_away_once_it_is_flat():
    s = timesteps.build("learning-progress", LIN, buckets=5, epsilon=0.2)
    rng = np.random.default_rng(0)
    flat = np.ones(5)

    def falling_then_flat(step):  # bucket 2 falls for 300 steps, then stays where it got to
        x = flat.copy()
        x[2] = 1.0 * np.exp(-min(step, 300) / 100.0)
        return x

    feed(s, falling_then_flat, 200, rng, noise=0.02)
    p = s.probs()
    assert int(p.argmax()) == 2 and p[2] > 0.6
    assert all(p[k] < 0.1 for k in (0, 1, 3, 4)) and all(p[k] >= 0.2 / 5 - 1e-12 for k in range(5))
    t = s.sample(20_000, generator=g(0)).t
    share = ((t >= 400) & (t < 600)).double().mean().item()
    assert share == pytest.approx(float(p[2]), abs=0.015)
    assert s.status()["top_bucket"] == 2
    # flat from step 300 on: once the slow average has caught up (a few of its time constants of 100
    # observations) bucket 2 has no more progress than the others and loses its lead (among flat noisy
    # losses what is left of "progress" is noise, so p then wanders between the flat buckets)
    before = float(p[2])
    feed(s, lambda step: falling_then_flat(300), 1200, rng, noise=0.02)
    assert s.probs()[2] < before / 2


def test_absolute_progress_prefers_the_large_losses_and_temperature_sharpens():
    rng = np.random.default_rng(1)

    def two_falling(step):  # buckets 0 and 4 fall by the same fraction; bucket 0's loss is 100x larger
        f = np.exp(-step / 200.0)
        return np.array([100 * f, 1.0, 1.0, 1.0, f])

    rel = timesteps.build("learning-progress", LIN, buckets=5, progress="relative")
    ab = timesteps.build("learning-progress", LIN, buckets=5, progress="absolute")
    sharp = timesteps.build("learning-progress", LIN, buckets=5, progress="relative", temperature=0.25)
    for s in (rel, ab, sharp):
        feed(s, two_falling, 150, rng)
    assert rel.probs()[0] == pytest.approx(float(rel.probs()[4]), rel=1e-6)
    assert ab.probs()[0] > 0.75 and ab.probs()[4] < 0.05
    assert rel.probs()[1] == pytest.approx(0.04)  # only ε/K where nothing progresses
    assert sharp.probs()[0] == pytest.approx(float(rel.probs()[0]))  # equal progress stays equal

    # unequal progress: a lower temperature gives the faster-falling bucket a larger share
    def unequal(step):
        return np.array([np.exp(-step / 100.0), 1.0, 1.0, 1.0, np.exp(-step / 400.0)])

    rel = timesteps.build("learning-progress", LIN, buckets=5, progress="relative")
    sharp = timesteps.build("learning-progress", LIN, buckets=5, progress="relative", temperature=0.25)
    for s in (rel, sharp):
        feed(s, unequal, 150, rng)
    assert rel.probs()[0] > rel.probs()[4] > 0.04
    assert sharp.probs()[0] > rel.probs()[0] + 0.1 and sharp.probs()[4] < rel.probs()[4]


def test_unbiasing_weights_average_one_under_p():
    for process, T in (
        (DiscreteProcess.linear(1000), 1000),
        (DiscreteProcess.linear(997), 997),
        (EDMProcess(), None),
    ):
        s = timesteps.build("learning-progress", process, buckets=7, unbias=True, epsilon=0.1)
        rng = np.random.default_rng(2)
        k = np.arange(7)
        if process.continuous:
            for step in range(100):
                sig = s.sample(512, generator=g(step)).t
                s.observe(sig, torch.tensor(np.where(s.bucket(sig).numpy() < 3, np.exp(-step / 50.0), 1.0)))
        else:
            feed(s, lambda step, k=k: np.where(k < 3, np.exp(-step / 50.0), 1.0), 100, rng)
        p = s.probs()
        assert p.max() > 0.2  # far from uniform
        # exactly: Σ_k p_k · (q_k / p_k) = Σ_k q_k = 1
        assert float((p * (s.mass / p)).sum()) == pytest.approx(1.0, abs=1e-12)
        d = s.sample(200_000, generator=g(9))
        assert d.weight.double().mean().item() == pytest.approx(1.0, abs=0.01)
        if T:
            # weighted draws are uniform over t: each bucket's weighted share is its share of the T steps
            b = s.bucket(d.t)
            share = torch.zeros(7, dtype=torch.float64).index_add_(0, b, d.weight.double()) / len(b)
            assert torch.allclose(share, s.mass, atol=0.01)


def test_state_round_trip_continues_identically():
    rng = np.random.default_rng(3)
    a = timesteps.build("learning-progress", LIN, buckets=6, temperature=0.5)
    for step in range(40):
        d = a.sample(64, generator=g(step))
        a.observe(d.t, torch.tensor(rng.uniform(0.5, 1.0, 64) * np.exp(-step * d.t.numpy() / 4e4)))
    tensors: dict = {}
    flat = checkpoint.flatten(a.state_dict(), tensors, "sampler")
    b = timesteps.build("learning-progress", LIN, buckets=6, temperature=0.5)
    b.load_state_dict(checkpoint.unflatten(json.loads(json.dumps(flat)), tensors))
    assert b.status() == a.status() and b.step == a.step
    for step in range(40, 60):
        da, db = a.sample(64, generator=g(step)), b.sample(64, generator=g(step))
        assert torch.equal(da.t, db.t) and torch.equal(da.weight, db.weight)
        loss = torch.rand(64, generator=g(step + 100))
        a.observe(da.t, loss)
        b.observe(db.t, loss)
    assert torch.equal(a.probs(), b.probs())
    with pytest.raises(ValueError, match="buckets=6 but this sampler has buckets=5"):
        timesteps.build("learning-progress", LIN, buckets=5).load_state_dict(a.state_dict())


def test_non_finite_losses_are_dropped_and_edm_buckets_are_quantiles():
    s = timesteps.build("learning-progress", LIN, buckets=2)
    s.observe(torch.tensor([0, 999, 1]), torch.tensor([float("nan"), 1.0, 2.0]))
    assert s.seen.tolist() == [1, 1] and s.fast.tolist() == [2.0, 1.0]
    e = timesteps.build("learning-progress", EDMProcess(P_mean=-1.2, P_std=1.2), buckets=4)
    sig = torch.exp(torch.tensor([-1.2 - 2.0, -1.2 - 0.1, -1.2 + 0.1, -1.2 + 2.0]))
    assert e.bucket(sig).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"buckets": 0}, "buckets=0"),
        ({"buckets": 1001}, "1001"),
        ({"fast_rate": 0.01, "slow_rate": 0.1}, "fast_rate=0.01.*above slow_rate=0.1"),
        ({"epsilon": 1.5}, "epsilon=1.5"),
        ({"temperature": 0}, "temperature=0"),
        ({"progress": "rel"}, "progress='rel'"),
        ({"unbias": 1}, "unbias=1"),
    ],
)
def test_bad_parameters(kw, match):
    with pytest.raises(ValueError, match=match):
        timesteps.build("learning-progress", LIN, **kw)


def _observe_on_rank(rank, world):
    s = timesteps.build("learning-progress", DiscreteProcess.linear(100), buckets=4)
    gen = g(0)  # the same generator on both ranks: identical state gives identical draws
    for step in range(30):
        d = s.sample(8, generator=gen)
        # each rank sees other losses; only the all-reduced sums decide
        s.observe(d.t, (1.0 + rank) * torch.exp(-step * d.t.double() / 500.0))
    return rank, s.fast.tolist(), s.slow.tolist(), s.seen.tolist(), s.probs().tolist()


def test_distributed_ranks_agree():
    res = run_gloo_ranks(_observe_on_rank)
    assert res[0][1:] == res[1][1:]
    assert sum(res[0][3]) == 30 * 16  # both ranks' 8 samples per step were counted
    assert max(res[0][4]) > 0.25  # the draws left uniform: the decisions ran on shared values


def test_the_default_progress_is_absolute_and_a_checkpoint_from_the_relative_default_is_refused():
    s = timesteps.build("learning-progress", LIN, buckets=5)
    assert s.progress_kind == "absolute" and s.state_dict()["progress"] == "absolute"
    old = timesteps.build("learning-progress", LIN, buckets=5, progress="relative").state_dict()
    del old["progress"]  # a checkpoint written before the key existed, when relative was the default
    with pytest.raises(ValueError, match="progress='relative'.*progress: relative"):
        timesteps.build("learning-progress", LIN, buckets=5).load_state_dict(old)
    timesteps.build("learning-progress", LIN, buckets=5, progress="relative").load_state_dict(old)
    explicit = timesteps.build("learning-progress", LIN, buckets=5, progress="absolute")
    explicit.load_state_dict({k: v for k, v in explicit.state_dict().items() if k != "progress"})
