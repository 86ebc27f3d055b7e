"""The 2025-2026 noise-level samplers: ``laplace`` (a Laplace density in log-SNR), ``curriculum-sampling``
(logit-normal, then uniform) and ``optimal-gap`` (draws by the loss above the exact optimal loss)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TINY
from diffusion_curriculum import config, noise_levels, optimal_loss, timesteps
from diffusion_curriculum import process as P
from diffusion_curriculum.errors import ConfigError
from diffusion_curriculum.train import Trainer


def _laplace_cdf(x, mu, b):
    return torch.where(x < mu, 0.5 * torch.exp((x - mu) / b), 1 - 0.5 * torch.exp(-(x - mu) / b))


def _ks(samples: torch.Tensor, cdf) -> float:
    x = samples.double().sort().values
    n = len(x)
    emp = torch.arange(1, n + 1, dtype=torch.float64) / n
    return float((emp - cdf(x)).abs().max())


@pytest.mark.parametrize(("mu", "b"), [(0.0, 0.5), (-1.5, 1.0)])
def test_laplace_draws_log_snr_from_the_laplace_density_on_edm(mu, b):
    s = timesteps.build("laplace", P.build("edm", sigma_min=1e-6, sigma_max=1e6), mu=mu, b=b)
    sigma = s.sample(100_000, generator=torch.Generator().manual_seed(0)).t
    lam = -2 * sigma.double().log()
    assert _ks(lam, lambda x: _laplace_cdf(x, mu, b)) < 0.01
    assert lam.median().item() == pytest.approx(mu, abs=0.02)
    assert (lam - mu).abs().mean().item() == pytest.approx(b, rel=0.02)


def test_laplace_on_flow_and_discrete_processes_has_the_same_log_snr():
    g = torch.Generator().manual_seed(1)
    flow = P.build("flow")
    t = timesteps.build("laplace", flow).sample(50_000, generator=g).t
    assert _ks(flow.snr(t.double()).log(), lambda x: _laplace_cdf(x, 0.0, 0.5)) < 0.01
    lin = P.build("linear")
    t = timesteps.build("laplace", lin).sample(50_000, generator=g).t
    assert t.dtype == torch.long
    # the nearest timestep in ln σ: log-SNR within half a table step of a Laplace draw (KS on the table's grid)
    assert _ks(lin.snr(t).double().log(), lambda x: _laplace_cdf(x, 0.0, 0.5)) < 0.05


def test_laplace_refuses_a_bad_scale_in_one_sentence():
    with pytest.raises(ValueError, match=r"sampler parameter b=0 is invalid; allowed: a number > 0"):
        timesteps.build("laplace", P.build("linear"), b=0)


def test_curriculum_sampling_is_logit_normal_then_exactly_uniform():
    proc = P.build("linear")
    s = timesteps.build("curriculum-sampling", proc, total_steps=10, switch=0.3)
    ln = timesteps.build("logit-normal", proc)
    assert s.switch_step == 3
    for step in range(10):
        a = s.sample(64, generator=torch.Generator().manual_seed(step)).t
        if step < 3:
            want = ln.sample(64, generator=torch.Generator().manual_seed(step)).t
        else:
            want = torch.randint(0, proc.T, (64,), generator=torch.Generator().manual_seed(step))
        assert torch.equal(a, want), step
        assert s.status()["phase"] == ("logit-normal" if step < 3 else "uniform")
        s.observe(a, torch.ones(64))
    fresh = timesteps.build("curriculum-sampling", proc, total_steps=10, switch=0.3)
    fresh.load_state_dict(s.state_dict())
    assert fresh.uniform_phase()


def test_curriculum_sampling_on_flow_draws_the_sd3_density_first():
    flow = P.build("flow")
    s = timesteps.build("curriculum-sampling", flow, total_steps=100)
    t = s.sample(50_000, generator=torch.Generator().manual_seed(0)).t
    logit = (t / (1 - t)).double().log()
    assert _ks(logit, lambda x: 0.5 * (1 + torch.erf(x / math.sqrt(2)))) < 0.01


def test_curriculum_sampling_needs_the_planned_steps():
    with pytest.raises(ValueError, match="total_steps=None is invalid"):
        timesteps.build("curriculum-sampling", P.build("flow"))


# -- optimal-gap ----------------------------------------------------------------------------------------------
def _gap_sampler(**kw):
    return timesteps.build("optimal-gap", P.build("linear"), buckets=4, **kw)


def test_optimal_gap_is_uniform_until_its_floor_is_set_and_every_bucket_seen(immediate_observations):
    s = _gap_sampler()
    assert torch.allclose(s.probs(), torch.full((4,), 0.25, dtype=torch.float64))
    t = torch.tensor([0, 300, 600, 900])
    s.observe(t, torch.tensor([1.0, 0.5, 0.2, 0.1]))
    assert not s.ready() and s.probs()[0] == 0.25
    s.set_floor([0.0, 0.5, 0.1, 0.1])
    assert s.ready()


@pytest.mark.parametrize(
    ("form", "g"),
    [
        ("gap", [1.0, 0.0, 0.1, 0.0]),
        ("sqrt", [1.0, 0.0, math.sqrt(0.1), 0.0]),
        ("relative", [1.0, 0.0, 0.5, 0.0]),
    ],
)
def test_optimal_gap_draws_in_proportion_to_the_loss_above_the_floor(immediate_observations, form, g):
    s = _gap_sampler(form=form, epsilon=0.2)
    s.observe(torch.tensor([0, 300, 600, 900]), torch.tensor([1.0, 0.5, 0.2, 0.1]))
    s.set_floor([0.0, 0.6, 0.1, 0.2])  # buckets 1 and 3 lie below their floor: no gap (clamped to 0)
    g = torch.tensor(g, dtype=torch.float64)
    assert torch.allclose(s.probs(), 0.8 * g / g.sum() + 0.05)
    t = s.sample(20_000, generator=torch.Generator().manual_seed(0)).t
    share = torch.bincount(noise_levels.bucket(s.process, t, 4), minlength=4).double() / len(t)
    assert torch.allclose(share, s.probs(), atol=0.01)


def test_optimal_gap_moves_its_averages_and_resumes_with_its_floor(immediate_observations):
    s = _gap_sampler(rate=0.5)
    t = torch.tensor([0, 300, 600, 900])
    s.observe(t, torch.tensor([1.0, 1.0, 1.0, 1.0]))
    s.observe(t, torch.tensor([0.0, 1.0, 3.0, float("nan")]))
    assert s.loss.tolist() == [0.5, 1.0, 2.0, 1.0] and s.seen.tolist() == [2, 2, 2, 1]
    s.set_floor([0.1, 0.2, 0.3, 0.4])
    fresh = _gap_sampler(rate=0.5)
    fresh.load_state_dict(s.state_dict())
    assert torch.equal(fresh.probs(), s.probs()) and torch.equal(fresh.floor, s.floor)


def test_optimal_gap_refuses_a_floor_of_the_wrong_length():
    with pytest.raises(ValueError, match=r"set_floor needs 4 values \(one per bucket\), got shape \(2,\)"):
        _gap_sampler().set_floor([0.1, 0.2])
    with pytest.raises(ValueError, match=r"set_floor got non-finite values in buckets \[1, 3\]"):
        _gap_sampler().set_floor([0.1, float("nan"), 0.2, float("inf")])


def test_the_trainer_gives_optimal_gap_its_floor(tmp_path):
    cfg = config.resolve(overrides=[*TINY, "steps=4", "sampler.name=optimal-gap", "sampler.buckets=5"])
    tr = Trainer(cfg, tmp_path)
    want = optimal_loss.per_bucket_floor(tr.process, "eps", tr.dataset.data, 5, seed=cfg["eval"]["seed"])
    assert tr.sampler.floor.tolist() == want
    assert all(v >= 0 for v in want) and not tr.sampler.ready()  # not before every bucket is observed


def test_optimal_gap_on_data_too_large_names_the_alternative(tmp_path, monkeypatch):
    monkeypatch.setattr(optimal_loss, "MAX_WORK", 10)
    cfg = config.resolve(overrides=[*TINY, "sampler.name=optimal-gap"])
    with pytest.raises(
        ConfigError, match="needs the exact optimal loss of the training data.*learning-progress"
    ) as e:
        Trainer(cfg, tmp_path)
    assert "\n" not in str(e.value)


def test_optimal_gap_refuses_noise_that_depends_on_the_data(tmp_path):
    cfg = config.resolve(overrides=[*TINY, "sampler.name=optimal-gap", "noise.name=knn"])
    with pytest.raises(ConfigError, match="needs noise.name=gaussian: .* noise.name=knn pairs them"):
        Trainer(cfg, tmp_path)


def test_a_conditional_runs_floor_mixes_the_unconditional_one_by_the_label_drop_rate(tmp_path):
    cfg = config.resolve(
        overrides=[
            *TINY,
            "steps=2",
            "sampler.name=optimal-gap",
            "sampler.buckets=4",
            "cond.enabled=true",
            "cond.drop_prob=0.25",
        ]
    )
    tr = Trainer(cfg, tmp_path)
    kw = dict(seed=cfg["eval"]["seed"])
    cond = optimal_loss.per_bucket_floor(
        tr.process, "eps", tr.dataset.data, 4, labels=tr.dataset.labels, **kw
    )
    uncond = optimal_loss.per_bucket_floor(tr.process, "eps", tr.dataset.data, 4, **kw)
    want = [0.75 * c + 0.25 * u for c, u in zip(cond, uncond)]
    assert tr.sampler.floor.tolist() == pytest.approx(want, rel=1e-12)
    assert uncond[-1] > cond[-1]  # the label helps most at the noisiest levels
