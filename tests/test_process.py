"""Noise processes against closed forms computed independently here."""

import math

import numpy as np
import pytest
import torch

from diffusion_curriculum.process import DiscreteProcess, EDMProcess, ProcessError, build


def test_linear_schedule_matches_closed_form():
    p = DiscreteProcess.linear(1000)
    betas = np.linspace(1e-4, 0.02, 1000)
    ac = np.cumprod(1 - betas)
    assert p.T == 1000
    np.testing.assert_allclose(p.alphas_cumprod.numpy(), ac, rtol=1e-12)
    np.testing.assert_allclose(p.betas.numpy(), betas, rtol=1e-9)
    t = torch.tensor([0, 500, 999])
    np.testing.assert_allclose(p.snr(t).numpy(), (ac / (1 - ac))[[0, 500, 999]], rtol=1e-5)


def test_cosine_schedule_matches_nichol_dhariwal():
    T, s = 1000, 0.008
    p = DiscreteProcess.cosine(T)
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    betas = np.array([min(1 - f(i + 1) / f(i), 0.999) for i in range(T)])
    np.testing.assert_allclose(p.alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=1e-12)
    assert p.betas.max().item() == pytest.approx(0.999)  # the clip is active at the end
    # without the clip the first ᾱ is f(1)/f(0)
    assert p.alphas_cumprod[0].item() == pytest.approx(f(1) / f(0), rel=1e-12)


def test_from_alphas_cumprod_roundtrip_and_validation():
    p = DiscreteProcess.linear(50)
    q = DiscreteProcess.from_alphas_cumprod(p.alphas_cumprod.float())
    np.testing.assert_allclose(q.alphas_cumprod.numpy(), p.alphas_cumprod.numpy(), rtol=1e-6)
    with pytest.raises(ProcessError, match="non-increasing"):
        DiscreteProcess.from_alphas_cumprod(torch.tensor([0.5, 0.9]))
    with pytest.raises(ProcessError, match="inside"):
        DiscreteProcess.from_alphas_cumprod(torch.tensor([1.0, 0.5]))
    with pytest.raises(ProcessError, match="T must"):
        DiscreteProcess.linear(1)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_discrete_targets_and_inverses(prediction):
    p = DiscreteProcess.cosine(100)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 3, 4, 4, generator=g), torch.randn(6, 3, 4, 4, generator=g)
    t = torch.tensor([0, 10, 50, 70, 98, 99])
    a = p.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    x_t = p.add_noise(x0, eps, t)
    torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * eps)
    target = p.target(x0, eps, t, prediction)
    expected = {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction]
    torch.testing.assert_close(target, expected)
    # a perfect prediction inverts to the true x0 and ε
    torch.testing.assert_close(p.predict_x0(target, x_t, t, prediction), x0, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(p.predict_eps(target, x_t, t, prediction), eps, atol=2e-3, rtol=1e-3)


def test_discrete_check_t():
    p = DiscreteProcess.linear(10)
    with pytest.raises(ProcessError, match="integer"):
        p.check_t(torch.tensor([0.5]))
    with pytest.raises(ProcessError, match=r"\[0, 10\)"):
        p.check_t(torch.tensor([10]))


def test_edm_preconditioning_closed_form():
    p = EDMProcess()
    sigma = torch.tensor([0.002, 0.5, 1.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = p.precondition(sigma)
    sd = 0.5
    np.testing.assert_allclose(c_skip.numpy(), sd**2 / (sigma.numpy() ** 2 + sd**2))
    np.testing.assert_allclose(c_out.numpy(), sigma.numpy() * sd / np.sqrt(sigma.numpy() ** 2 + sd**2))
    np.testing.assert_allclose(c_in.numpy(), 1 / np.sqrt(sigma.numpy() ** 2 + sd**2))
    np.testing.assert_allclose(c_noise.numpy(), np.log(sigma.numpy()) / 4)
    np.testing.assert_allclose(p.snr(sigma.float()).numpy(), 1 / sigma.numpy() ** 2, rtol=1e-5)


def test_edm_v_target_equals_weighted_edm_loss():
    """With the F-target, the plain MSE equals EDM's λ(σ)·‖D − x0‖² (Karras et al. eq. 8 with λ c_out² = 1)."""
    p = EDMProcess()
    g = torch.Generator().manual_seed(1)
    x0, n = (
        torch.randn(5, 2, generator=g, dtype=torch.float64),
        torch.randn(5, 2, generator=g, dtype=torch.float64),
    )
    sigma = torch.tensor([0.01, 0.3, 1.0, 5.0, 60.0], dtype=torch.float64)
    x = p.add_noise(x0, n, sigma)
    torch.testing.assert_close(x, x0 + sigma[:, None] * n)
    F_target = p.target(x0, n, sigma, "v", x)
    F = F_target + 0.1 * torch.randn(5, 2, generator=g, dtype=torch.float64)  # an imperfect network output
    D = p.predict_x0(F, x, sigma, "v")
    lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    edm_loss = lam * ((D - x0) ** 2).sum(1)
    torch.testing.assert_close(((F - F_target) ** 2).sum(1), edm_loss)
    # and the perfect output recovers x0 and n
    torch.testing.assert_close(p.predict_x0(F_target, x, sigma, "v"), x0)
    torch.testing.assert_close(p.predict_eps(F_target, x, sigma, "v"), n)
    x_in, c_noise = p.model_input(x, sigma)
    torch.testing.assert_close(x_in, x / (sigma**2 + 0.25).sqrt()[:, None])
    torch.testing.assert_close(c_noise, sigma.log() / 4)


def test_build_errors_name_the_parameter():
    assert build("cosine", T=10).T == 10
    assert isinstance(build("edm", P_mean=-1.0), EDMProcess)
    with pytest.raises(ValueError, match="process.name='cosin'"):
        build("cosin")
    with pytest.raises(ValueError, match="process.beta_end"):
        build("cosine", beta_end=0.1)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        EDMProcess(sigma_min=5, sigma_max=1)
    with pytest.raises(ValueError, match="T must"):
        build("linear", T="many")
