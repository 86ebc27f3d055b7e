"""Flow ODE samplers on a 2-D Gaussian, where the exact velocity field is known in closed form."""

import pytest
import torch

from diffusion_curriculum import config, generate
from diffusion_curriculum.errors import ConfigError
from diffusion_curriculum.process import DiscreteProcess, FlowProcess

MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
SIGMA = torch.tensor([[0.5, 0.3], [0.3, 0.4]], dtype=torch.float64)


class ExactVelocity(torch.nn.Module):
    """E[ε − x0 | x_t] for x0 ~ N(μ, Σ), ε ~ N(0, I), x_t = (1 − t')x0 + t'ε:
    −μ + (t'I − (1 − t')Σ)·C⁻¹·(x − (1 − t')μ), C = (1 − t')²Σ + t'²I. Reads t' back from the time input."""

    def __init__(self, process, prediction="v"):
        super().__init__()
        self.process, self.prediction = process, prediction

    def forward(self, x, c):
        tp = (c.double() / self.process.time_scale)[:, None, None]
        eye = torch.eye(2, dtype=torch.float64)
        cov = (1 - tp) ** 2 * SIGMA + tp**2 * eye
        cross = tp * eye - (1 - tp) * SIGMA
        xd = x.double()
        dev = torch.linalg.solve(cov, (xd - (1 - tp[:, :, 0]) * MU)[:, :, None])[:, :, 0]
        v = -MU + (cross @ dev[:, :, None])[:, :, 0]
        if self.prediction == "eps":  # ε = x + (1 − t')v
            return (xd + (1 - tp[:, :, 0]) * v).float()
        return v.float()


def _moments(x):
    x = x.double()
    return x.mean(0), torch.cov(x.T)


@pytest.mark.parametrize(
    ("method", "steps", "shift", "prediction", "tol"),
    [
        ("flow-euler", 200, 1.0, "v", 0.03),
        ("flow-euler", 200, 3.0, "v", 0.03),
        ("flow-heun", 20, 3.0, "v", 0.02),
        ("flow-heun", 20, 1.0, "eps", 0.02),
    ],
)
def test_the_exact_velocity_carries_noise_to_the_target_gaussian(method, steps, shift, prediction, tol):
    p = FlowProcess(shift=shift)
    x = generate.sample(
        ExactVelocity(p, prediction),
        p,
        20_000,
        (2,),
        method=method,
        steps=steps,
        prediction=prediction,
        seed=0,
        batch_size=20_000,
    )
    mean, cov = _moments(x)
    assert (mean - MU).abs().max() < tol, mean
    assert (cov - SIGMA).abs().max() < tol, cov


def test_too_few_euler_steps_are_measurably_wrong():
    """The check above can fail: one Euler step from pure noise lands on x − v(x, 1) = μ exactly (zero spread)."""
    p = FlowProcess()
    x = generate.sample(
        ExactVelocity(p), p, 4000, (2,), method="flow-euler", steps=1, seed=0, batch_size=4000
    )
    mean, cov = _moments(x)
    assert (mean - MU).abs().max() < 0.05 and cov.abs().max() < 1e-3


def test_auto_picks_flow_euler_and_methods_check_the_process():
    p = FlowProcess()
    m = ExactVelocity(p)
    a = generate.sample(m, p, 8, (2,), seed=3)
    b = generate.sample(m, p, 8, (2,), method="flow-euler", steps=50, seed=3)
    assert torch.equal(a, b)
    with pytest.raises(
        ValueError, match="method='ddim' needs a DiscreteProcess; use method='flow-euler' or 'flow-heun'"
    ):
        generate.sample(m, p, 2, (2,), method="ddim")
    with pytest.raises(ValueError, match="method='flow-heun' needs a FlowProcess; use method='ddim'"):
        generate.sample(m, DiscreteProcess.linear(10), 2, (2,), method="flow-heun")


def test_config_accepts_exactly_the_generation_methods():
    for method in generate.METHODS:
        config.resolve(overrides=[f"eval.method={method}"])
    with pytest.raises(ConfigError, match="eval.method"):
        config.resolve(overrides=["eval.method=euler"])
