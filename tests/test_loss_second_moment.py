"""Loss-second-moment importance sampling (Nichol & Dhariwal 2021, §3.3)."""

import numpy as np
import pytest
import torch

from conftest import run_gloo_ranks
from diffusion_curriculum import timesteps
from diffusion_curriculum.process import DiscreteProcess, EDMProcess


@pytest.fixture(autouse=True)
def _immediate(immediate_observations):
    """Observations applied at once: these tests check what the sampler decides, not when it reads."""


def g(seed):
    return torch.Generator().manual_seed(seed)


def warm_up(s, T, H, scale=lambda t: t + 1.0):
    """Feed every t exactly H losses L_t = scale(t) · (1 + small per-entry variation)."""
    for j in range(H):
        t = torch.arange(T)
        s.observe(t, scale(t.double()) * (1 + 0.1 * j))


def test_uniform_randint_until_warm():
    T, H = 50, 3
    s = timesteps.build("loss-second-moment", DiscreteProcess.linear(T), history=H)
    assert s.status() == {"warm": False, "full": f"0/{T}"}
    for j in range(2 * H):
        d = s.sample(40, generator=g(j))
        assert torch.equal(d.t, torch.randint(0, T, (40,), generator=g(j)))
        assert torch.equal(d.weight, torch.ones(40))
        s.observe(torch.arange(T - 1), torch.rand(T - 1))  # t = T − 1 never observed: never warm
    assert s.status() == {
        "warm": False,
        "full": f"{T - 1}/{T}",
    }  # a user sees why the draws are still uniform
    s.observe(torch.full((H - 1,), T - 1), torch.ones(H - 1))
    assert not s.warm()
    s.observe(torch.tensor([T - 1]), torch.ones(1))
    assert s.status() == {"warm": True}
    assert not torch.equal(s.sample(40, generator=g(0)).t, torch.randint(0, T, (40,), generator=g(0)))


def test_density_matches_independent_computation():
    T, H, u = 40, 4, 0.001
    s = timesteps.build("loss-second-moment", DiscreteProcess.linear(T), history=H)
    warm_up(s, T, H)
    # independent: L_t,j = (t+1)(1 + 0.1 j); p ∝ sqrt(mean_j L²), mixed with u uniform
    L = np.array([[(t + 1) * (1 + 0.1 * j) for j in range(H)] for t in range(T)])
    p = np.sqrt((L**2).mean(axis=1))
    p = p / p.sum() * (1 - u) + u / T
    np.testing.assert_allclose(s.probs().numpy(), p, rtol=1e-12)
    d = s.sample(300_000, generator=g(1))
    freq = torch.bincount(d.t, minlength=T).double() / 300_000
    np.testing.assert_allclose(freq.numpy(), p, atol=0.003)
    # weights 1/(T p(t))
    np.testing.assert_allclose(d.weight.double().numpy(), 1 / (T * p[d.t.numpy()]), rtol=1e-6)


def test_weights_unbiased():
    T, H = 100, 2
    s = timesteps.build("loss-second-moment", DiscreteProcess.cosine(T), history=H, uniform_prob=0.01)
    warm_up(s, T, H, scale=lambda t: torch.exp(-t / 20))  # strongly non-uniform density
    p = s.probs()
    assert (p * (1.0 / (T * p))).sum().item() == pytest.approx(1.0, abs=1e-12)
    d = s.sample(400_000, generator=g(3))
    assert d.weight.double().mean().item() == pytest.approx(1.0, abs=0.02)
    # and the weighted loss is unbiased for the uniform mean
    L = torch.linspace(1, 2, T, dtype=torch.float64)
    est = (d.weight.double() * L[d.t]).mean().item()
    assert est == pytest.approx(L.mean().item(), rel=0.01)


def test_history_keeps_last_losses_and_duplicates():
    T, H = 5, 3
    s = timesteps.build("loss-second-moment", DiscreteProcess.linear(T), history=H)
    # t = 2 appears 5 times in one batch, t = 0 twice; losses say their order
    t = torch.tensor([2, 0, 2, 2, 1, 2, 0, 2])
    loss = torch.tensor([1.0, 10.0, 2.0, 3.0, 7.0, 4.0, 11.0, 5.0])
    s.observe(t, loss)
    assert s.counts.tolist() == [2, 1, 5, 0, 0]
    assert sorted(s.history[2].tolist()) == [3.0, 4.0, 5.0]  # the last 3 written in batch order
    assert sorted(s.history[0, :2].tolist()) == [10.0, 11.0]
    # one by one would give the same ring buffer
    ref = timesteps.build("loss-second-moment", DiscreteProcess.linear(T), history=H)
    for ti, li in zip(t.tolist(), loss.tolist()):
        ref.observe(torch.tensor([ti]), torch.tensor([li]))
    assert torch.equal(ref.history, s.history) and torch.equal(ref.counts, s.counts)
    # feed many more: only the last H per t remain
    for k in range(10):
        s.observe(torch.tensor([4, 4]), torch.tensor([100.0 + 2 * k, 101.0 + 2 * k]))
    assert sorted(s.history[4].tolist()) == [117.0, 118.0, 119.0]
    assert s.counts[4].item() == 20
    # non-finite losses are dropped
    s.observe(torch.tensor([3, 3]), torch.tensor([float("nan"), 6.0]))
    assert s.counts[3].item() == 1 and s.history[3, 0].item() == 6.0


def test_vectorised_update_large_batch():
    T, H = 1000, 10
    s = timesteps.build("loss-second-moment", DiscreteProcess.linear(T), history=H)
    t = torch.randint(0, T, (10_000,), generator=g(0))
    loss = torch.rand(10_000, generator=g(1))
    s.observe(t, loss)  # 10k with many duplicates; no per-element Python loop
    assert s.counts.sum().item() == 10_000
    # the last H occurrences of each t (in batch order) are stored
    for tv in (0, 123, 999):
        idx = (t == tv).nonzero().flatten()
        assert sorted(s.history[tv, : min(H, len(idx))].tolist()) == pytest.approx(
            sorted(loss[idx[-H:]].double().tolist())
        )
    assert s.warm() == bool((torch.bincount(t, minlength=T) >= H).all())


def test_state_roundtrip_reproduces_draws():
    T, H = 30, 2
    p = DiscreteProcess.linear(T)
    s = timesteps.build("loss-second-moment", p, history=H)
    warm_up(s, T, H)
    s.observe(torch.tensor([3, 3, 7]), torch.tensor([50.0, 60.0, 70.0]))
    st = s.state_dict()
    assert isinstance(st["history"], torch.Tensor) and isinstance(st["counts"], torch.Tensor)
    s2 = timesteps.build("loss-second-moment", p, history=H)
    s2.load_state_dict(st)
    assert s2.step == s.step and s2.status() == {"warm": True}
    a, b = s.sample(64, generator=g(4)), s2.sample(64, generator=g(4))
    assert torch.equal(a.t, b.t) and torch.equal(a.weight, b.weight)
    st["history"][:] = 0  # the state is a copy
    assert s.history.abs().sum() > 0
    with pytest.raises(ValueError, match="same T and history"):
        timesteps.build("loss-second-moment", p, history=H + 1).load_state_dict(s.state_dict())


def test_bad_params_and_inputs():
    p = DiscreteProcess.linear(10)
    with pytest.raises(ValueError, match="does not support a continuous process"):
        timesteps.build("loss-second-moment", EDMProcess())
    for kw, name in [
        ({"history": 0}, "history"),
        ({"history": 2.0}, "history"),
        ({"uniform_prob": 1.5}, "uniform_prob"),
    ]:
        with pytest.raises(ValueError, match=rf"\b{name}="):
            timesteps.build("loss-second-moment", p, **kw)
    s = timesteps.build("loss-second-moment", p)
    with pytest.raises(ValueError, match="per-sample losses"):
        s.observe(torch.tensor([1, 2]), torch.ones(3))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        s.observe(torch.tensor([10]), torch.ones(1))


def _observe_on_rank(rank, world):
    s = timesteps.build("loss-second-moment", DiscreteProcess.linear(6), history=2)
    # each rank sees different timesteps; after gathering every rank holds the same history
    t = torch.tensor([rank, rank + 3, rank])
    s.observe(t, torch.tensor([1.0, 2.0, 3.0]) + 10 * rank)
    return rank, s.history.tolist(), s.counts.tolist()


def test_distributed_gather_gives_identical_history():
    """Two gloo ranks on CPU."""
    res = run_gloo_ranks(_observe_on_rank)
    assert res[0][1:] == res[1][1:]
    counts = res[0][2]
    assert counts == [2, 2, 0, 1, 1, 0]
    ref = timesteps.build("loss-second-moment", DiscreteProcess.linear(6), history=2)
    ref.update(
        torch.tensor([0, 3, 0, 1, 4, 1]), torch.tensor([1.0, 2.0, 3.0, 11.0, 12.0, 13.0], dtype=torch.float64)
    )
    assert res[0][1] == ref.history.tolist()
