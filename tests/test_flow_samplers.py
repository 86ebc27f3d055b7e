"""Every timestep sampler on a FlowProcess: draws in (0, 1), exact state round trips, and each density's own law."""

import math

import numpy as np
import pytest
import torch

from diffusion_curriculum import noise_levels, timesteps
from diffusion_curriculum.process import DiscreteProcess, FlowProcess
from diffusion_curriculum.timesteps import clusters as C
from diffusion_curriculum.timesteps.base import TimestepSampler
from diffusion_curriculum.timesteps.speed import flow_table

FLOW = FlowProcess(shift=3.0)
#: small settings so the stateful samplers change state within a few dozen steps
PARAMS = {
    "ddc": {"clusters": 4, "max_steps_per_stage": 3},
    "clts": {"start": 0, "end": 10},
    "loss-second-moment": {"buckets": 4, "history": 2},
    "learning-progress": {"buckets": 4},
    "speed": {"cells": 100},
    "interval": {"lo": 0.25, "hi": 0.5},
}


def test_every_registered_sampler_supports_flow():
    assert all("flow" in timesteps.REGISTRY[n].supports for n in timesteps.names())


def _run(sampler, steps, g):
    for _ in range(steps):
        d = sampler.sample(16, generator=g)
        sampler.observe(d.t, torch.rand(16, generator=g) + d.t)


@pytest.mark.parametrize("name", timesteps.names())
def test_draws_lie_inside_0_1_and_state_round_trips(name):
    s = timesteps.build(name, FLOW, total_steps=40, **PARAMS.get(name, {}))
    g = torch.Generator().manual_seed(0)
    seen = []
    for _ in range(30):
        d = s.sample(16, generator=g)
        assert d.t.dtype == torch.float32 and d.t.shape == (16,)
        assert (d.t > 0).all() and (d.t < 1).all(), name
        assert torch.isfinite(d.weight).all() and (d.weight > 0).all()
        seen.append(d.t)
        s.observe(d.t, torch.rand(16, generator=g) + d.t)
    assert torch.cat(seen).unique().numel() > 100  # a continuous density, not a few grid points
    fresh = timesteps.build(name, FLOW, total_steps=40, **PARAMS.get(name, {}))
    fresh.load_state_dict(s.state_dict())
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(3):
        a, b = s.sample(16, generator=g1), fresh.sample(16, generator=g2)
        assert torch.equal(a.t, b.t) and torch.equal(a.weight, b.weight)
        s.observe(a.t, torch.ones(16))
        fresh.observe(b.t, torch.ones(16))
    if name in ("ddc", "loss-second-moment", "learning-progress", "clts"):
        assert (
            s.state_dict() != timesteps.build(name, FLOW, total_steps=40, **PARAMS.get(name, {})).state_dict()
        )


def test_a_sampler_that_does_not_name_flow_is_refused_in_one_sentence():
    class Old(TimestepSampler):
        name = "old"

    with pytest.raises(
        ValueError, match=r"sampler 'old' does not support a flow process .*supports: discrete"
    ):
        Old(FLOW)


def test_uniform_and_logit_normal_laws():
    g = torch.Generator().manual_seed(1)
    t = timesteps.build("uniform", FLOW).sample(40_000, generator=g).t
    assert abs(t.mean().item() - 0.5) < 0.01 and abs(t.var().item() - 1 / 12) < 0.003
    ln = timesteps.build("logit-normal", FLOW, mean=0.5, std=0.8).sample(40_000, generator=g).t.double()
    logit = (ln / (1 - ln)).log()  # the draw is u itself: the shift is the process's, applied later
    assert abs(logit.mean().item() - 0.5) < 0.02 and abs(logit.std().item() - 0.8) < 0.02


def test_lognormal_gives_the_noised_sample_edms_sigma_through_the_shift():
    g = torch.Generator().manual_seed(2)
    t = timesteps.build("lognormal", FLOW).sample(40_000, generator=g).t
    log_sigma = FLOW.sigma(t.double()).log()
    assert abs(log_sigma.mean().item() + 1.2) < 0.03 and abs(log_sigma.std().item() - 1.2) < 0.03


def test_interval_on_flow_and_its_errors():
    t = timesteps.build("interval", FLOW, lo=0.25, hi=0.5).sample(1000, generator=torch.Generator()).t
    assert (t >= 0.25).all() and (t < 0.5).all()
    with pytest.raises(ValueError, match="hi=0.2 is invalid"):
        timesteps.build("interval", FLOW, lo=0.25, hi=0.2)


def test_ddc_flow_clusterings():
    assert C.build("uniform", FLOW, 4) == [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]
    cl = C.build("log-snr", FLOW, 5)
    assert cl[0][0] == 0.0 and cl[-1][1] == 1.0
    assert all(a[1] == b[0] for a, b in zip(cl[:-1], cl[1:]))
    inner = torch.tensor([c[1] for c in cl[:-1]], dtype=torch.float64)
    lam = FLOW.snr(torch.tensor([FLOW.eps, *inner.tolist(), 1 - FLOW.eps], dtype=torch.float64)).log()
    np.testing.assert_allclose(np.diff(lam.numpy()), np.full(5, float(lam[-1] - lam[0]) / 5), rtol=1e-6)
    with pytest.raises(
        ValueError,
        match="clustering='snr' needs a discrete process.*allowed for a flow process: uniform, log-snr",
    ):
        C.build("snr", FLOW, 4)
    with pytest.raises(ValueError, match="clustering='quantile' needs an EDM process"):
        timesteps.build("ddc", FLOW, clustering="quantile")


def test_ddc_stage_one_draws_the_noisiest_cluster_only():
    s = timesteps.build("ddc", FLOW, total_steps=1000, clusters=4, pacing="fixed", steps_per_stage=5)
    g = torch.Generator().manual_seed(3)
    t = s.sample(2000, generator=g).t
    assert t.min() >= 0.75 and t.max() < 1
    s2 = timesteps.build(
        "ddc", FLOW, total_steps=1000, clusters=4, pacing="fixed", steps_per_stage=5, per_cluster_share=True
    )
    for _ in range(5):
        s2.observe(torch.full((4,), 0.9), torch.ones(4))
    t2 = s2.sample(400, generator=g).t  # stage 2: two clusters, equal shares
    assert ((t2 >= 0.5) & (t2 < 0.75)).sum() == 200 and (t2 >= 0.75).sum() == 200


@pytest.mark.parametrize(("coordinate", "mu", "sigma"), [("t", 0.3, 0.1), ("log-snr", -0.4, 2.3)])
def test_clts_gaussian_in_its_coordinate(coordinate, mu, sigma):
    s = timesteps.build(
        "clts", FLOW, total_steps=10, start=0, end=1, coordinate=coordinate, mu=mu, sigma=sigma
    )
    s.observe(torch.tensor([0.5]), torch.ones(1))  # λ = 1: only the Gaussian
    t = s.sample(40_000, generator=torch.Generator().manual_seed(4)).t.double()
    c = t if coordinate == "t" else FLOW.snr(t).log()
    assert abs(c.mean().item() - mu) < 0.02 * max(1.0, sigma) and abs(c.std().item() - sigma) < 0.02 * max(
        1.0, sigma
    )


def test_clts_noise_rate_means_the_same_noise_levels_as_on_a_vp_process():
    s = timesteps.build(
        "clts", FLOW, total_steps=10, start=0, end=1, coordinate="noise-rate", mu=0.6, sigma=0.05
    )
    s.observe(torch.tensor([0.5]), torch.ones(1))
    t = s.sample(20_000, generator=torch.Generator().manual_seed(4)).t.double()
    rate = (1 + FLOW.snr(t)).rsqrt()  # the VP noise rate √(1 − ᾱ) of the same SNR
    assert abs(rate.mean().item() - 0.6) < 0.005 and abs(rate.std().item() - 0.05) < 0.005


def test_speed_on_flow_derives_tau_and_the_dual_point_from_the_snr_curve():
    p = FlowProcess()
    table = flow_table(p, 1000)
    centres = (torch.arange(1000, dtype=torch.float64) + 0.5) / 1000
    torch.testing.assert_close(table.snr(torch.arange(1000)).double(), p.snr(centres), rtol=1e-5, atol=0)
    s = timesteps.build("speed", p)
    # independently: the VP-equivalent noise rate n(t) = t/√(t² + (1 − t)²) has slope (1 − t)/(t² + (1 − t)²)^{3/2};
    # SpeeD's pivot is where one cell's change, slope/1000, drops below 1e-4
    slope = lambda t: (1 - t) / (t * t + (1 - t) ** 2) ** 1.5  # noqa: E731
    lo, hi = 0.5, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if slope(mid) / 1000 >= 1e-4 else (lo, mid)
    assert abs(s.t_dual - (lo * 1000 + 0.5)) <= 1.5
    assert s.tau == 700
    plain = timesteps.build("speed", p, dual=False, weights=False)
    t = plain.sample(40_000, generator=torch.Generator().manual_seed(6)).t
    assert abs((t < 0.7).double().mean().item() - 1400 / 1700) < 0.01
    with pytest.raises(ValueError, match="cells=5 is invalid.*on a flow process"):
        timesteps.build("speed", DiscreteProcess.linear(100), cells=5)
    with pytest.raises(ValueError, match="tau=7 is invalid.*T = 5"):
        timesteps.build("speed", p, cells=5, tau=7)


def test_loss_second_moment_buckets_of_t(immediate_observations):
    s = timesteps.build("loss-second-moment", FLOW, buckets=4, history=2, uniform_prob=0.0)
    loud = torch.tensor([0.1, 0.3, 0.6, 0.9])
    for _ in range(2):
        s.observe(loud, torch.tensor([1.0, 1.0, 1.0, 9.0]))
    assert s.warm()
    d = s.sample(20_000, generator=torch.Generator().manual_seed(7))
    share = (noise_levels.bucket(FLOW, d.t, 4) == 3).double().mean().item()
    assert abs(share - 0.75) < 0.01  # p ∝ √E[L²]: 9 / (1 + 1 + 1 + 9)
    assert abs(d.weight.double().mean().item() - 1.0) < 0.02
    with pytest.raises(ValueError, match="float times"):
        s.observe(torch.tensor([1]), torch.ones(1))
    with pytest.raises(ValueError, match="buckets=0 is invalid"):
        timesteps.build("loss-second-moment", FLOW, buckets=0)
    with pytest.raises(ValueError, match="buckets=4 is invalid.*on a flow process"):
        timesteps.build("loss-second-moment", DiscreteProcess.linear(100), buckets=4)


def test_learning_progress_buckets_of_t():
    s = timesteps.build("learning-progress", FLOW, buckets=4, epsilon=0.0)
    for k in range(30):  # bucket 1's loss falls, the others stay
        s.observe(torch.tensor([0.1, 0.3, 0.6, 0.9]), torch.tensor([1.0, 1.0 / (1 + k), 1.0, 1.0]))
    t = s.sample(4000, generator=torch.Generator().manual_seed(8)).t
    assert ((t >= 0.25) & (t < 0.5)).all()
    assert math.isclose(float(s.mass.sum()), 1.0)
