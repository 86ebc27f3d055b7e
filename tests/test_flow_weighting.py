"""Loss weightings on a FlowProcess: the same weighted loss for every prediction type, the velocity-target closed
forms, SD3's cosmap and sigma_sqrt against diffusers, and the learned edm2-uncertainty."""

import math

import pytest
import torch

from diffusion_curriculum import weighting
from diffusion_curriculum.process import DiscreteProcess, FlowProcess

FLOW = FlowProcess(shift=3.0)


def _setup(B=64, D=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, D, generator=g, dtype=torch.float64)
    noise = torch.randn(B, D, generator=g, dtype=torch.float64)
    t = 0.02 + 0.96 * torch.rand(B, generator=g, dtype=torch.float64)
    return g, x0, noise, t, FLOW.add_noise(x0, noise, t)


@pytest.mark.parametrize("name", ["min-snr", "soft-min-snr", "p2", "edm", "cosmap", "sigma_sqrt"])
def test_same_weighted_loss_for_every_prediction(name):
    """λ_eps‖ε̂−ε‖² = λ_v‖v̂−v‖² = λ_x0‖x̂0−x0‖² for one estimate x̂0: catches a wrong flow conversion factor."""
    g, x0, noise, t, x_t = _setup()
    x0_hat = x0 + 0.3 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    eps_hat = FLOW.predict_eps(x0_hat, x_t, t, "x0")
    outs = {"x0": x0_hat, "eps": eps_hat, "v": eps_hat - x0_hat}
    losses = {}
    for pred, out in outs.items():
        torch.testing.assert_close(FLOW.predict_x0(out, x_t, t, pred), x0_hat, rtol=1e-9, atol=1e-9)
        target = FLOW.target(x0, noise, t, pred)
        losses[pred] = weighting.build(name, FLOW, pred)(t).double() * (out - target).pow(2).sum(1)
    torch.testing.assert_close(losses["eps"], losses["x0"], rtol=1e-5, atol=0)
    torch.testing.assert_close(losses["v"], losses["x0"], rtol=1e-5, atol=0)


def test_velocity_target_closed_forms():
    t = torch.tensor([0.05, 0.3, 0.5, 0.7, 0.95], dtype=torch.float64)
    tp = 3 * t / (1 + 2 * t)
    snr = ((1 - tp) / tp) ** 2
    want = {  # the x0-space weight times ‖x̂0 − x0‖²/‖v̂ − v‖² = t'²
        "min-snr": snr.clamp(max=5.0) * tp**2,
        "soft-min-snr": snr * 5 / (snr + 5) * tp**2,
        "p2": snr / (1 + snr) * tp**2,
        "edm": (snr + 4.0) * tp**2,
        "cosmap": 2 / (math.pi * (1 - 2 * tp + 2 * tp**2)),
        "sigma_sqrt": tp**-2,
        "none": torch.ones_like(t),
    }
    for name, w in want.items():
        got = weighting.build(name, FLOW, "v")(t.float())
        assert got.dtype == torch.float32 and got.shape == (5,)
        torch.testing.assert_close(got.double(), w, rtol=1e-5, atol=0, msg=name)


@pytest.mark.parametrize("scheme", ["cosmap", "sigma_sqrt"])
def test_cosmap_and_sigma_sqrt_match_diffusers(scheme):
    pytest.importorskip("diffusers")
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    t = torch.tensor([0.01, 0.2, 0.5, 0.8, 0.99])
    ref = compute_loss_weighting_for_sd3(scheme, sigmas=FLOW.shifted(t))
    torch.testing.assert_close(weighting.build(scheme, FLOW, "v")(t), ref.float(), rtol=1e-5, atol=0)


def test_flow_only_and_discrete_only_weightings_say_so():
    with pytest.raises(ValueError, match="weighting.name='cosmap' needs a flow process"):
        weighting.build("cosmap", DiscreteProcess.linear(10), "eps")
    with pytest.raises(ValueError, match="weighting.name='speed' needs a discrete process.*speed sampler"):
        weighting.build("speed", FLOW, "v")
    with pytest.raises(ValueError, match="float times"):
        weighting.build("min-snr", FLOW, "v")(torch.tensor([1]))


def test_edm2_uncertainty_on_flow_uses_the_equivalent_sigma():
    w = weighting.build("edm2-uncertainty", FLOW, "v", channels=8, base="cosmap")
    t = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(w.c_noise(t), FLOW.sigma(t).log() / 4)
    with torch.no_grad():
        w.u_bias.fill_(0.5)
    loss = torch.tensor([1.0, 2.0, 3.0])
    base = weighting.build("cosmap", FLOW, "v")(t)
    torch.testing.assert_close(w.weighted(t, loss), base * math.exp(-0.5) * loss + 0.5)
