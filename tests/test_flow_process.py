"""FlowProcess against closed forms computed here, and against diffusers' FlowMatchEulerDiscreteScheduler."""

import numpy as np
import pytest
import torch

from diffusion_curriculum.process import FlowProcess, ProcessError, build


def _shift(t, s):
    return s * t / (1 + (s - 1) * t)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_noising_target_snr_sigma_closed_forms(shift):
    p = FlowProcess(shift=shift)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 2, 3, generator=g), torch.randn(5, 2, 3, generator=g)
    t = torch.tensor([0.01, 0.2, 0.5, 0.8, 0.99])
    tp = _shift(t.double(), shift)
    torch.testing.assert_close(p.shifted(t).double(), tp, rtol=1e-6, atol=0)
    x_t = p.add_noise(x0, eps, t)
    torch.testing.assert_close(
        x_t, ((1 - tp) * 1.0).float().view(-1, 1, 1) * x0 + tp.float().view(-1, 1, 1) * eps
    )
    torch.testing.assert_close(p.target(x0, eps, t), eps - x0)  # v is the default
    torch.testing.assert_close(p.target(x0, eps, t, "eps"), eps)
    torch.testing.assert_close(p.target(x0, eps, t, "x0"), x0)
    np.testing.assert_allclose(p.snr(t).numpy(), (((1 - tp) / tp) ** 2).numpy(), rtol=1e-5)
    np.testing.assert_allclose(p.sigma(t).numpy(), (tp / (1 - tp)).numpy(), rtol=1e-5)
    # σ is the EDM-equivalent level: x_t / (1 − t') = x0 + σ ε
    torch.testing.assert_close(
        x_t / (1 - tp.float()).view(-1, 1, 1), x0 + p.sigma(t).view(-1, 1, 1) * eps, rtol=1e-4, atol=1e-4
    )
    assert p.shifted(torch.tensor([0.5])).item() == pytest.approx(shift / (1 + shift))
    torch.testing.assert_close(p.unshifted(p.shifted(t)), t)


@pytest.mark.parametrize("prediction", ["v", "eps", "x0"])
def test_a_perfect_prediction_inverts_to_x0_eps_and_v(prediction):
    p = FlowProcess(shift=2.0)
    g = torch.Generator().manual_seed(1)
    x0, eps = (
        torch.randn(4, 3, generator=g, dtype=torch.float64),
        torch.randn(4, 3, generator=g, dtype=torch.float64),
    )
    t = torch.tensor([0.05, 0.3, 0.6, 0.95], dtype=torch.float64)
    x_t = p.add_noise(x0, eps, t)
    out = p.target(x0, eps, t, prediction)
    torch.testing.assert_close(p.predict_x0(out, x_t, t, prediction), x0)
    torch.testing.assert_close(p.predict_eps(out, x_t, t, prediction), eps)
    torch.testing.assert_close(p.predict_v(out, x_t, t, prediction), eps - x0)


def test_the_clamp_keeps_every_quantity_finite_at_the_ends():
    p = FlowProcess(shift=3.0, eps=1e-5)
    t = torch.tensor([0.0, 1.0])
    tp = p.shifted(t)
    assert 0 < tp[0] < tp[1] < 1
    for v in (p.snr(t), p.sigma(t), p.predict_x0(torch.ones(2, 1), torch.ones(2, 1), t, "eps")):
        assert torch.isfinite(v).all()
    assert p.snr(t)[0] > 1e8 and p.snr(t)[1] < 1e-8  # the ends stay nearly pure data / pure noise
    lo, hi = p.log_snr_range()
    assert lo == pytest.approx(float(p.snr(torch.tensor([1.0], dtype=torch.float64)).log()))
    assert hi > 20 > -20 > lo


def test_model_input_scales_the_shifted_time():
    x = torch.zeros(2, 1)
    t = torch.tensor([0.25, 0.5])
    _, c = FlowProcess(shift=3.0).model_input(x, t)
    torch.testing.assert_close(c, 1000 * _shift(t, 3.0))
    _, c1 = FlowProcess(time_scale=1.0).model_input(x, t)
    torch.testing.assert_close(c1, t)


def test_grid_is_evenly_spaced_then_shifted():
    p = FlowProcess(shift=3.0)
    torch.testing.assert_close(p.grid(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    torch.testing.assert_close(p.shifted_grid(4), _shift(p.grid(4), 3.0))
    assert p.shifted_grid(1).tolist() == [1.0, 0.0]


def test_build_and_bad_parameters_name_the_problem():
    assert isinstance(build("flow", shift=3.0), FlowProcess)
    with pytest.raises(ProcessError, match="shift > 0"):
        build("flow", shift=0)
    with pytest.raises(ProcessError, match="time_scale"):
        FlowProcess(time_scale=-1)
    with pytest.raises(ProcessError, match="eps in"):
        FlowProcess(eps=0.7)
    with pytest.raises(ProcessError, match="grid_min"):
        FlowProcess(grid_min=1.5)
    with pytest.raises(ProcessError, match="shfit"):
        build("flow", shfit=3.0)
    p = FlowProcess()
    with pytest.raises(ProcessError, match="float times"):
        p.check_t(torch.tensor([1]))
    with pytest.raises(ProcessError, match=r"\[0, 1\]"):
        p.check_t(torch.tensor([1.5]))


# -- against diffusers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_matches_diffusers_scale_noise_sigmas_and_inference_grid(shift):
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    p = FlowProcess.from_scheduler(sch)
    assert p.shift == shift and p.time_scale == 1000
    N = 1000
    idx = torch.tensor([0, 1, 250, 500, 998, 999])
    u = (N - idx).double() / N  # the unshifted position of the scheduler's i-th training timestep
    # equal up to the clamp, which moves t = 1 (the scheduler's first sigma) to 1 − eps
    torch.testing.assert_close(p.shifted(u).float(), sch.sigmas[idx], rtol=1e-6, atol=1.01 * p.eps)
    torch.testing.assert_close(p.shifted(u[1:]).float(), sch.sigmas[idx[1:]], rtol=1e-6, atol=1e-7)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 4, 2, 2, generator=g), torch.randn(6, 4, 2, 2, generator=g)
    ref = sch.scale_noise(x0, sch.timesteps[idx], eps)
    torch.testing.assert_close(p.add_noise(x0, eps, u.float()), ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(p.add_noise(x0, eps, u.float())[1:], ref[1:], rtol=1e-5, atol=1e-6)
    # the network's time input is the scheduler's timestep
    _, c = p.model_input(x0, u.float())
    torch.testing.assert_close(c, sch.timesteps[idx], rtol=1e-6, atol=1000 * 1.01 * p.eps)
    for steps in (1, 4, 28):
        sch.set_timesteps(steps)
        torch.testing.assert_close(p.shifted_grid(steps).float(), sch.sigmas, rtol=1e-6, atol=1e-7)


def test_from_scheduler_refuses_what_it_cannot_represent():
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    with pytest.raises(ProcessError, match="use_dynamic_shifting"):
        FlowProcess.from_scheduler(sch)
