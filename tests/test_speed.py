"""SpeeD (Wang et al. 2024, arXiv 2405.17403): asymmetric + dual sampling and change-aware weights."""

import numpy as np
import pytest
import torch
from scipy import stats

from diffusion_curriculum import timesteps
from diffusion_curriculum.process import DiscreteProcess, EDMProcess
from diffusion_curriculum.timesteps.speed import (
    asymmetric_probs,
    change_aware_weights,
    scaled_tau,
    t_dual,
)


def g(seed):
    return torch.Generator().manual_seed(seed)


def test_t_dual_check_values():
    assert t_dual(DiscreteProcess.linear(1000)) == 642
    assert t_dual(DiscreteProcess.cosine(1000)) == 959
    # independent: first t with a central-difference slope of sqrt(1 - ᾱ) below 1e-4, plus one
    y = np.sqrt(1 - DiscreteProcess.linear(1000).alphas_cumprod.numpy())
    slope = np.concatenate([[y[1] - y[0]], (y[2:] - y[:-2]) / 2, [y[-1] - y[-2]]])
    assert [i for i, v in enumerate(slope) if v < 1e-4][0] + 1 == 642
    # a schedule whose curve never flattens that much: the pivot falls back to T − 1 (mirror)
    assert t_dual(DiscreteProcess.linear(100)) == 99


def test_asymmetric_probs_mass_and_empirical_draws():
    p = asymmetric_probs(1000, 700, 2.0)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert p[:700].sum().item() == pytest.approx(0.824, abs=0.001)
    assert p[:700].sum().item() == pytest.approx(1400 / 1700, abs=1e-12)
    assert p[0].item() == pytest.approx(2 / 1700) and p[999].item() == pytest.approx(1 / 1700)
    s = timesteps.build("speed", DiscreteProcess.linear(1000), dual=False)
    t = s.sample(200_000, generator=g(0)).t
    assert torch.equal(t, torch.multinomial(p, 200_000, replacement=True, generator=g(0)))
    bins = torch.bincount(t // 50, minlength=20).numpy()
    expected = np.array([p[i * 50 : (i + 1) * 50].sum().item() for i in range(20)]) * 200_000
    assert stats.chisquare(bins, expected).pvalue > 1e-4
    assert (t < 700).float().mean().item() == pytest.approx(0.824, abs=0.005)


def independent_dual(base, pivot):
    out = []
    for v in base.tolist():
        out.append(pivot - v if v < pivot else v - pivot)
    return torch.tensor(out, dtype=torch.long)


@pytest.mark.parametrize("n", [1, 2, 7, 64, 65])
def test_dual_mapping_and_batch_size(n):
    proc = DiscreteProcess.linear(1000)
    s = timesteps.build("speed", proc)
    d = s.sample(n, generator=g(n))
    assert d.t.shape == (n,) and d.weight.shape == (n,) and d.t.dtype == torch.long
    base = torch.multinomial(asymmetric_probs(1000, 700, 2.0), n // 2 + 1, replacement=True, generator=g(n))
    expected = torch.cat([base, independent_dual(base, 642)])[:n]
    assert torch.equal(d.t, expected)
    assert (d.t >= 0).all() and (d.t < 1000).all()


def test_dual_stays_in_range_with_fallback_pivot():
    s = timesteps.build("speed", DiscreteProcess.linear(100))
    t = s.sample(10_001, generator=g(1)).t
    assert t.shape == (10_001,) and int(t.min()) >= 0 and int(t.max()) <= 99


def test_change_aware_weights():
    proc = DiscreteProcess.linear(1000)
    lam = 0.6
    w = change_aware_weights(proc, lam=lam)
    assert w.dtype == torch.float64 and w.shape == (1000,)
    assert torch.all(w[700:] == 1.0)
    assert w[:700].min().item() >= 1 - lam - 1e-12 and w[:700].max().item() <= lam + 1e-12
    d = np.gradient(1 - proc.alphas_cumprod.numpy())
    # larger d_t (faster change) → larger weight: w is an increasing affine function of d below τ
    order_d, order_w = np.argsort(d[:700], kind="stable"), np.argsort(w[:700].numpy(), kind="stable")
    assert np.array_equal(order_d, order_w)
    assert w[int(np.argmax(d))].item() == pytest.approx(lam)
    # min/max over all t (the authors' code): independent formula
    ref = (1 - lam) + (2 * lam - 1) * (d - d.min()) / (d.max() - d.min())
    ref[700:] = 1
    np.testing.assert_allclose(w.numpy(), ref, rtol=1e-12)
    # λ = 0.5: flat 0.5 below τ
    w5 = change_aware_weights(proc, lam=0.5)
    assert torch.all(w5[:700] == 0.5)


def test_draw_weights():
    proc = DiscreteProcess.cosine(1000)
    s = timesteps.build("speed", proc, lam=0.8, tau=600)
    d = s.sample(512, generator=g(2))
    assert torch.allclose(d.weight, change_aware_weights(proc, 600, 0.8).float()[d.t])
    assert d.weight.dtype == torch.float32
    s = timesteps.build("speed", proc, weights=False)
    assert torch.equal(s.sample(32).weight, torch.ones(32))
    assert s.status() == {}


def test_tau_scaling():
    assert scaled_tau(1000) == 700
    assert scaled_tau(500) == 350
    assert scaled_tau(4000) == 2800
    assert scaled_tau(5) == 4  # 3.5 rounds up
    assert scaled_tau(2) == 1
    assert scaled_tau(500, 100) == 100
    s = timesteps.build("speed", DiscreteProcess.linear(500))
    assert s.tau == 350
    assert s.p[:350].sum().item() == pytest.approx(700 / 850)
    assert torch.all(s.w[350:] == 1.0) and not torch.all(s.w[:350] == 1.0)


def test_rejects_edm_and_bad_params():
    with pytest.raises(ValueError, match="does not support a continuous process"):
        timesteps.build("speed", EDMProcess())
    p = DiscreteProcess.linear(100)
    for kw, name in [
        ({"k": 0.5}, "k"),
        ({"lam": 0.4}, "lam"),
        ({"lam": 1.1}, "lam"),
        ({"tau": 0}, "tau"),
        ({"tau": 100}, "tau"),
        ({"tau": 50.0}, "tau"),
        ({"dual": 1}, "dual"),
        ({"weights": "yes"}, "weights"),
    ]:
        with pytest.raises(ValueError, match=rf"\b{name}="):
            timesteps.build("speed", p, **kw)
    with pytest.raises(ValueError, match="discrete"):
        change_aware_weights(EDMProcess())


def test_state_roundtrip():
    p = DiscreteProcess.linear(1000)
    s = timesteps.build("speed", p)
    for _ in range(3):
        d = s.sample(8)
        s.observe(d.t, torch.rand(8))
    s2 = timesteps.build("speed", p)
    s2.load_state_dict(s.state_dict())
    assert s2.step == 3
    assert torch.equal(s.sample(9, generator=g(0)).t, s2.sample(9, generator=g(0)).t)
