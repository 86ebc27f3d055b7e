"""CLTS (Xu et al. 2024, arXiv 2404.07946) — the [reconstruction] of docs/methods.md, "CLTS"."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from diffusion_curriculum import timesteps
from diffusion_curriculum.process import DiscreteProcess, EDMProcess


def g(seed):
    return torch.Generator().manual_seed(seed)


def reference_probs(T, lam, mu=0.3, sigma=0.2):
    """p(t) ∝ (1 − λ)/T + λ φ((t/T − μ)/σ)/Z, written independently with scipy."""
    x = np.arange(T) / T
    phi = stats.norm.pdf((x - mu) / sigma)
    return (1 - lam) / T + lam * phi / phi.sum()


def test_lambda_ramp_fraction_and_steps():
    s = timesteps.build("clts", DiscreteProcess.linear(100), total_steps=1000)  # end = 0.5 → 500 steps
    for step, lam in [(0, 0.0), (125, 0.25), (250, 0.5), (500, 1.0), (900, 1.0)]:
        s.step = step
        assert s.lam() == pytest.approx(lam)
        assert s.status() == {"lambda": round(lam, 4)}
    s = timesteps.build(
        "clts", DiscreteProcess.linear(100), total_steps=1000, start=100, end=300, lambda_max=0.8
    )
    for step, lam in [(0, 0.0), (100, 0.0), (200, 0.4), (300, 0.8), (10_000, 0.8)]:
        s.step = step
        assert s.lam() == pytest.approx(lam)
    # unknown total: a fractional end means 50 000 steps, a fractional start step 0
    s = timesteps.build("clts", DiscreteProcess.linear(100), start=0.2, end=0.5)
    assert (s.s_start, s.s_end) == (0.0, 50_000.0)
    s.step = 25_000
    assert s.lam() == pytest.approx(0.5)
    # mixed: fractional start, step-count end
    s = timesteps.build("clts", DiscreteProcess.linear(100), total_steps=1000, start=0.1, end=200)
    assert (s.s_start, s.s_end) == (100.0, 200.0)


def test_probs_match_independent_formula():
    T = 1000
    s = timesteps.build("clts", DiscreteProcess.cosine(T), total_steps=100, start=0, end=100, coordinate="t")
    for step in (0, 30, 100):
        s.step = step
        p = s.probs()
        assert p.dtype == torch.float64 and p.shape == (T,)
        np.testing.assert_allclose(p.numpy(), reference_probs(T, step / 100), rtol=1e-10, atol=1e-15)
        assert p.sum().item() == pytest.approx(1.0, abs=1e-12)
    s2 = timesteps.build(
        "clts", DiscreteProcess.linear(50), total_steps=10, mu=0.7, sigma=0.05, coordinate="t"
    )
    s2.step = 5
    np.testing.assert_allclose(s2.probs().numpy(), reference_probs(50, 1.0, 0.7, 0.05), rtol=1e-10)


def test_probs_cached_per_lambda():
    s = timesteps.build("clts", DiscreteProcess.linear(100), total_steps=100)
    s.step = 10
    a = s.probs()
    assert s.probs() is a  # same λ: no recomputation
    s.step = 11
    assert s.probs() is not a


def test_lambda_zero_is_uniform_randint():
    T = 1000
    s = timesteps.build("clts", DiscreteProcess.linear(T), total_steps=1000)
    d = s.sample(64, generator=g(3))
    assert torch.equal(d.t, torch.randint(0, T, (64,), generator=g(3)))
    assert torch.equal(d.weight, torch.ones(64))
    np.testing.assert_allclose(s.probs().numpy(), np.full(T, 1 / T))
    counts = torch.bincount(s.sample(100_000, generator=g(4)).t // 100, minlength=10).numpy()
    assert stats.chisquare(counts).pvalue > 1e-4


def test_mass_moves_away_from_large_t():
    T = 1000
    s = timesteps.build("clts", DiscreteProcess.linear(T), total_steps=1000)  # ramp over 500 steps
    tail, emp = [], []
    for step in (0, 100, 250, 400, 500):
        s.step = step
        tail.append(s.probs()[int(0.8 * T) :].sum().item())
        emp.append((s.sample(50_000, generator=g(step)).t >= 0.8 * T).float().mean().item())
    assert all(a > b for a, b in zip(tail, tail[1:]))
    assert tail[0] == pytest.approx(0.2)
    assert tail[-1] < 0.01
    np.testing.assert_allclose(emp, tail, atol=0.01)


def test_observe_advances_the_schedule():
    s = timesteps.build("clts", DiscreteProcess.linear(100), total_steps=20)  # end = 10 steps
    for _ in range(5):
        d = s.sample(8)
        s.observe(d.t, torch.rand(8))
    assert s.step == 5
    assert s.status() == {"lambda": 0.5}


def test_edm_lognormal_at_zero_and_shift_at_one():
    proc = EDMProcess(P_mean=-1.2, P_std=1.2)
    s = timesteps.build("clts", proc, total_steps=100, start=0, end=10)
    d = s.sample(200_000, generator=g(0))
    assert d.t.is_floating_point() and (d.t > 0).all()
    ls = d.t.double().log()
    assert ls.mean().item() == pytest.approx(-1.2, abs=0.02)
    assert ls.std().item() == pytest.approx(1.2, abs=0.02)
    median0 = d.t.median().item()
    with pytest.raises(ValueError, match="discrete"):
        s.probs()

    s.step = 10  # λ = 1: u ~ N(0.3, 0.2²) truncated to (0, 1)
    d1 = s.sample(200_000, generator=g(1))
    u = stats.norm.cdf((d1.t.double().log().numpy() + 1.2) / 1.2)
    assert u.min() > 0 and u.max() < 1
    expected_median = stats.truncnorm.median((0 - 0.3) / 0.2, (1 - 0.3) / 0.2, loc=0.3, scale=0.2)
    assert np.median(u) == pytest.approx(expected_median, abs=0.005)
    assert np.median(u) == pytest.approx(0.3, abs=0.03)
    assert (
        stats.kstest(u, stats.truncnorm((0 - 0.3) / 0.2, (1 - 0.3) / 0.2, loc=0.3, scale=0.2).cdf).pvalue
        > 1e-4
    )
    assert d1.t.median().item() < median0  # smaller σ


def test_state_roundtrip_reproduces_draws():
    p = DiscreteProcess.linear(200)
    s = timesteps.build("clts", p, total_steps=40)
    for _ in range(7):
        d = s.sample(16)
        s.observe(d.t, torch.rand(16))
    st = s.state_dict()
    s2 = timesteps.build("clts", p, total_steps=40)
    s2.load_state_dict(st)
    assert s2.step == 7 and s2.lam() == s.lam() > 0
    assert torch.equal(s.sample(32, generator=g(9)).t, s2.sample(32, generator=g(9)).t)
    e = timesteps.build("clts", EDMProcess(), total_steps=40)
    e.load_state_dict(st | {"coordinate": "t"})  # EDM has only its quantile coordinate
    e2 = timesteps.build("clts", EDMProcess(), total_steps=40)
    e2.load_state_dict(e.state_dict())
    assert torch.equal(e.sample(32, generator=g(5)).t, e2.sample(32, generator=g(5)).t)


@pytest.mark.parametrize(
    "kw,name",
    [
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -1}, "sigma"),
        ({"sigma": math.inf}, "sigma"),
        ({"mu": 1.5}, "mu"),
        ({"mu": "a"}, "mu"),
        ({"lambda_max": 1.2}, "lambda_max"),
        ({"lambda_max": -0.1}, "lambda_max"),
        ({"start": 1.5}, "start"),
        ({"start": -3}, "start"),
        ({"end": True}, "end"),
        ({"start": 0.5, "end": 0.2}, "end"),
        ({"start": 300, "end": 300}, "end"),
        ({"total_steps": 0}, "total_steps"),
    ],
)
def test_bad_params_raise_naming_them(kw, name):
    with pytest.raises(ValueError, match=rf"\b{name}="):
        timesteps.build("clts", DiscreteProcess.linear(100), **kw)


# -- the coordinate of the Gaussian ----------------------------------------------------------------------
def _coordinate_law(process, coordinate):
    """Mean and std of the Gaussian part's noise rate √(1 − ᾱ_t) (or log-SNR) under the sampler's mass."""
    s = timesteps.build("clts", process, total_steps=100, coordinate=coordinate)
    ac = process.alphas_cumprod.double()
    c = (1 - ac).sqrt() if coordinate == "noise-rate" else (ac / (1 - ac)).log()
    p = s._gauss
    m = (p * c).sum().item()
    return m, ((p * (c - m) ** 2).sum().sqrt()).item()


@pytest.mark.parametrize("coordinate", ["noise-rate", "log-snr"])
def test_schedule_free_coordinates_give_the_same_law_on_both_schedules(coordinate):
    lin, cos = DiscreteProcess.linear(1000), DiscreteProcess.cosine(1000)
    (m1, s1), (m2, s2) = _coordinate_law(lin, coordinate), _coordinate_law(cos, coordinate)
    scale = 1.0 if coordinate == "noise-rate" else 10.0
    assert abs(m1 - m2) < 0.02 * scale and abs(s1 - s2) < 0.02 * scale
    # in t the two schedules differ a lot: the same law of noise levels sits at other timesteps
    t = torch.arange(1000, dtype=torch.float64)
    mean_t = [
        (timesteps.build("clts", p, total_steps=100, coordinate=coordinate)._gauss * t).sum().item()
        for p in (lin, cos)
    ]
    assert mean_t[1] > mean_t[0] + 100


def test_coordinate_t_is_the_original_density():
    p = DiscreteProcess.cosine(1000)
    a = timesteps.build("clts", p, total_steps=100, coordinate="t")
    b = timesteps.build("clts", p, total_steps=100, coordinate="t", mu=0.3, sigma=0.2)
    x = torch.arange(1000, dtype=torch.float64) / 1000
    g = torch.exp(-0.5 * ((x - 0.3) / 0.2) ** 2)
    assert torch.equal(a._gauss, g / g.sum()) and torch.equal(a._gauss, b._gauss)
    assert a.coordinate == "t"


def test_the_default_coordinate_is_the_noise_rate_and_t_on_edm():
    p = DiscreteProcess.linear(1000)
    a = timesteps.build("clts", p, total_steps=100)
    b = timesteps.build("clts", p, total_steps=100, coordinate="noise-rate", mu=0.78, sigma=0.25)
    assert a.coordinate == "noise-rate" and torch.equal(a._gauss, b._gauss)
    assert timesteps.build("clts", EDMProcess(), total_steps=100).coordinate == "t"


def test_a_checkpoint_from_before_the_default_changed_is_refused_not_resumed_in_another_density():
    p = DiscreteProcess.linear(1000)
    old = timesteps.build("clts", p, total_steps=100, coordinate="t")
    state = old.state_dict()
    del state["coordinate"]  # what a checkpoint written before the key existed holds
    with pytest.raises(ValueError, match="coordinate='t'.*coordinate: t"):
        timesteps.build("clts", p, total_steps=100).load_state_dict(state)
    same = timesteps.build("clts", p, total_steps=100, coordinate="t")
    same.load_state_dict(state)  # the line the message names makes it resumable
    fresh = timesteps.build("clts", p, total_steps=100)
    fresh.load_state_dict(timesteps.build("clts", p, total_steps=100).state_dict())


def test_noise_rate_mass_is_the_gaussian_in_noise_rate():
    p = DiscreteProcess.linear(1000)
    s = timesteps.build("clts", p, total_steps=10, coordinate="noise-rate", mu=0.5, sigma=0.1, end=1)
    s.observe(torch.zeros(1, dtype=torch.long), torch.zeros(1))  # λ = 1 from step 1
    nr = (1 - p.alphas_cumprod.double()).sqrt()
    t = s.sample(200_000, generator=torch.Generator().manual_seed(0)).t
    drawn = nr[t]
    # a Gaussian N(0.5, 0.1²) in the noise rate, truncated to the schedule's range (≈ [0.01, 1])
    assert drawn.mean().item() == pytest.approx(0.5, abs=0.005)
    assert drawn.std().item() == pytest.approx(0.1, abs=0.005)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"coordinate": "noise_rate"}, "coordinate='noise_rate'.*did you mean 'noise-rate'"),
        ({"coordinate": "log-snr", "sigma": 0}, "sigma=0.*log-SNR"),
        ({"coordinate": "noise-rate", "mu": 1.5}, "mu=1.5.*noise-rate"),
        ({"coordinate": "log-snr", "mu": 500.0, "sigma": 0.1}, "no mass"),
    ],
)
def test_coordinate_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        timesteps.build("clts", DiscreteProcess.linear(1000), **kw)


def test_edm_keeps_its_quantile_coordinate():
    with pytest.raises(ValueError, match="coordinate='noise-rate'.*EDM"):
        timesteps.build("clts", EDMProcess(), coordinate="noise-rate")
    assert timesteps.build("clts", EDMProcess(), coordinate="t").coordinate == "t"
    assert timesteps.build("clts", DiscreteProcess.linear(100), coordinate="log-snr", mu=3.0).mu == 3.0


def test_a_legacy_checkpoint_with_an_explicit_coordinate_resumes():
    """Before the key was saved, an explicitly configured coordinate was honoured: such a checkpoint (no
    "coordinate" in its state) must resume under the same explicit setting, not be refused as a 't' run."""
    p = DiscreteProcess.linear(1000)
    old = timesteps.build("clts", p, total_steps=100, coordinate="noise-rate")
    state = old.state_dict()
    del state["coordinate"]
    timesteps.build("clts", p, total_steps=100, coordinate="noise-rate").load_state_dict(state)


def test_the_refusal_s_advice_resumes_a_legacy_run_end_to_end(tmp_path):
    """The line the refusal names ('coordinate: t' in config.yaml) must make the trainer resume the run, not
    trade the refusal for a fingerprint mismatch."""
    import yaml

    from conftest import TINY, train_until_interrupted
    from diffusion_curriculum import checkpoint, config
    from diffusion_curriculum.train import Trainer

    cfg = config.resolve(overrides=[*TINY, "steps=10", "checkpoint_every=5", "sampler.name=clts"])
    run = tmp_path / "run"
    train_until_interrupted(cfg, run, 5)
    # make it a checkpoint from before the key existed: no "coordinate" in the sampler's state
    step, st = checkpoint.load(checkpoint.list_checkpoints(run / "checkpoints")[0])
    st["sampler"].pop("coordinate")
    checkpoint.save(run / "checkpoints", step, st)
    with pytest.raises(ValueError, match="coordinate: t"):
        Trainer(cfg, run, resume=True).run()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["sampler"]["coordinate"] = "t"
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    cfg_t = config.validate(config.merge(config.DEFAULTS, saved))
    summary = Trainer(cfg_t, run, resume=True).run()
    assert summary["steps"] == 10


def test_a_fraction_of_an_unknown_total_is_said():
    """Without total_steps, end=0.5 (the default) silently planned over 50,000 steps; now a warning says so, from
    the caller's line."""
    import warnings

    from diffusion_curriculum.process import DiscreteProcess

    said = r"clts: end=0.5 is a fraction of total_steps, which was not given, so the schedule ramps over 50000 steps"
    with pytest.warns(UserWarning, match=said) as w:
        timesteps.build("clts", DiscreteProcess.linear(100))
    assert w[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        timesteps.build("clts", DiscreteProcess.linear(100), total_steps=1000)
        timesteps.build("clts", DiscreteProcess.linear(100), end=5000)
