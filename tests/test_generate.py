"""Tests for diffusion_curriculum.generate with oracle denoisers whose exact answer is known."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from diffusion_curriculum.generate import ddim, ddim_timesteps, ddpm, edm_heun, edm_sigmas, sample
from diffusion_curriculum.process import DiscreteProcess, EDMProcess

C = torch.tensor([0.3, -0.6])


class PointOracle(nn.Module):
    """Exact prediction for the one-point dataset x0 = c, in the given prediction type (discrete process)."""

    def __init__(self, process: DiscreteProcess, c: Tensor = C, prediction: str = "eps"):
        super().__init__()
        self.process, self.c, self.prediction = process, c, prediction

    def forward(self, x_t, t):
        t = t.round().long()
        ac = self.process.alphas_cumprod.float()[t].reshape(-1, *([1] * (x_t.dim() - 1)))
        eps = (x_t - ac.sqrt() * self.c) / (1 - ac).sqrt()
        if self.prediction == "eps":
            return eps
        if self.prediction == "x0":
            return self.c.expand_as(x_t)
        return ac.sqrt() * eps - (1 - ac).sqrt() * self.c  # v


class GaussianOracle(nn.Module):
    """Exact ε-prediction for data N(0, s² I): E[ε | x_t] = x_t sqrt(1−ᾱ) / (ᾱ s² + 1 − ᾱ)."""

    def __init__(self, process: DiscreteProcess, s: float):
        super().__init__()
        self.process, self.s = process, s

    def forward(self, x_t, t):
        ac = self.process.alphas_cumprod.float()[t.round().long()].reshape(-1, 1)
        return x_t * (1 - ac).sqrt() / (ac * self.s**2 + 1 - ac)


class EDMPointOracle(nn.Module):
    """D(x; σ) = c for the one-point dataset, expressed in the chosen prediction type of an EDMProcess."""

    def __init__(self, process: EDMProcess, prediction: str):
        super().__init__()
        self.process, self.prediction = process, prediction

    def forward(self, net_in, c_noise):
        sigma = (4 * c_noise).exp()
        c_skip, c_out, c_in, _ = self.process.precondition(sigma)
        c_skip, c_out, c_in, sig = (v.reshape(-1, 1) for v in (c_skip, c_out, c_in, sigma))
        x = net_in / c_in
        if self.prediction == "x0":
            return C.expand_as(x)
        if self.prediction == "eps":
            return (x - C) / sig
        return (C - c_skip * x) / c_out  # F-target ("v")


@pytest.fixture(scope="module")
def proc():
    return DiscreteProcess.cosine(T=100)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_ddpm_oracle_reaches_point(proc, prediction):
    g = torch.Generator().manual_seed(0)
    x = ddpm(PointOracle(proc, prediction=prediction), proc, (64, 2), prediction=prediction, generator=g)
    assert torch.allclose(x, C.expand(64, 2), atol=1e-3)


def test_ddpm_beta_variance_and_step_noises(proc):
    g = torch.Generator().manual_seed(0)
    x = ddpm(PointOracle(proc), proc, (8, 2), generator=g, variance="beta")
    assert torch.allclose(x, C.expand(8, 2), atol=1e-3)
    zs = torch.randn(proc.T, 8, 2, generator=torch.Generator().manual_seed(1))
    x0 = torch.randn(8, 2)
    a = ddpm(PointOracle(proc), proc, (8, 2), noise=x0, step_noises=zs, clip_x0=False)
    b = ddpm(PointOracle(proc), proc, (8, 2), noise=x0, step_noises=lambda t: zs[t], clip_x0=False)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="variance"):
        ddpm(PointOracle(proc), proc, (8, 2), variance="nope")


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddim_oracle_reaches_point(proc, eta, prediction):
    g = torch.Generator().manual_seed(0)
    model = PointOracle(proc, prediction=prediction)
    x = ddim(model, proc, (64, 2), steps=10, eta=eta, prediction=prediction, generator=g)
    assert torch.allclose(x, C.expand(64, 2), atol=1e-3)


def test_ddim_timesteps_spacing():
    assert ddim_timesteps(1000, 5) == [999, 749, 500, 250, 0]
    assert ddim_timesteps(10, 10) == list(range(9, -1, -1))
    assert ddim_timesteps(10, 1) == [9]
    with pytest.raises(ValueError, match="steps"):
        ddim_timesteps(10, 11)


@pytest.mark.parametrize("prediction", ["v", "eps", "x0"])
def test_edm_heun_oracle_reaches_point(prediction):
    p = EDMProcess()
    g = torch.Generator().manual_seed(0)
    x = edm_heun(EDMPointOracle(p, prediction), p, (64, 2), steps=8, prediction=prediction, generator=g)
    assert torch.allclose(x, C.expand(64, 2), atol=1e-3)
    x = edm_heun(EDMPointOracle(p, prediction), p, (16, 2), steps=8, prediction=prediction, S_churn=5.0)
    assert torch.allclose(x, C.expand(16, 2), atol=1e-3)


def test_edm_sigmas_schedule():
    s = edm_sigmas(18, 0.002, 80.0, 7.0)
    assert s.shape == (19,) and s[-1] == 0
    assert s[0].item() == pytest.approx(80.0) and s[-2].item() == pytest.approx(0.002)
    assert (s[1:] < s[:-1]).all()


def test_ddim_gaussian_std(proc):
    s = 0.5
    process = DiscreteProcess.cosine(T=1000)
    x = sample(
        GaussianOracle(process, s), process, 2000, (2,), method="ddim", steps=50, seed=0, clip_x0=False
    )
    assert x.std().item() == pytest.approx(s, rel=0.1)
    assert x.mean().abs().item() < 0.05


def test_ddpm_gaussian_std(proc):
    s = 0.5
    x = sample(GaussianOracle(proc, s), proc, 2000, (2,), method="ddpm", seed=0, clip_x0=False)
    assert x.std().item() == pytest.approx(s, rel=0.15)


def test_sample_seeds_and_chunks(proc):
    model = GaussianOracle(proc, 0.5)
    a = sample(model, proc, 10, (2,), method="ddim", steps=5, eta=1.0, seed=3, batch_size=4)
    b = sample(model, proc, 10, (2,), method="ddim", steps=5, eta=1.0, seed=3, batch_size=4)
    c = sample(model, proc, 10, (2,), method="ddim", steps=5, eta=1.0, seed=4, batch_size=4)
    assert a.shape == (10, 2) and torch.equal(a, b) and not torch.allclose(a, c)
    e = EDMProcess()
    h1 = sample(EDMPointOracle(e, "v"), e, 5, (2,), steps=4, seed=1)  # auto = heun
    assert torch.allclose(h1, C.expand(5, 2), atol=1e-3)


def test_sample_restores_training_mode_and_validates(proc):
    model = GaussianOracle(proc, 0.5)
    model.train()
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(m.training))
    sample(model, proc, 3, (2,), steps=3)
    assert model.training and seen and not any(seen)
    model.eval()
    sample(model, proc, 3, (2,), steps=3)
    assert not model.training
    e = EDMProcess()
    with pytest.raises(ValueError, match="method='heun'"):
        sample(model, proc, 3, (2,), method="heun")
    with pytest.raises(ValueError, match="method='ddim'"):
        sample(model, e, 3, (2,), method="ddim")
    with pytest.raises(ValueError, match="method='nope'"):
        sample(model, proc, 3, (2,), method="nope")
    with pytest.raises(ValueError, match="eta"):
        sample(model, e, 3, (2,), eta=0.5)
