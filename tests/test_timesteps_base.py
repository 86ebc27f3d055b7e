"""The sampler interface, the registry and the fixed densities."""

import math

import pytest
import torch

from diffusion_curriculum import timesteps
from diffusion_curriculum.process import DiscreteProcess, EDMProcess

PLAIN = (int, float, str, bool, type(None), torch.Tensor)


def assert_plain(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, str)
            assert_plain(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            assert_plain(v)
    else:
        assert isinstance(obj, PLAIN), type(obj)


@pytest.mark.parametrize("T,B,seed", [(1000, 64, 0), (7, 5, 123), (4000, 1, 9)])
def test_uniform_draws_exactly_like_randint(T, B, seed):
    s = timesteps.build("uniform", DiscreteProcess.linear(T))
    d = s.sample(B, generator=torch.Generator().manual_seed(seed))
    ref = torch.randint(0, T, (B,), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(d.t, ref) and d.t.dtype == torch.long
    assert torch.equal(d.weight, torch.ones(B))
    # with the global generator too
    torch.manual_seed(seed)
    a = s.sample(B).t
    torch.manual_seed(seed)
    assert torch.equal(a, torch.randint(0, T, (B,)))


def test_observe_advances_step_and_state_roundtrip():
    s = timesteps.build("uniform", DiscreteProcess.linear(100), total_steps=10)
    for _ in range(3):
        d = s.sample(4)
        s.observe(d.t, torch.rand(4))
    assert s.step == 3
    st = s.state_dict()
    assert_plain(st)
    s2 = timesteps.build("uniform", DiscreteProcess.linear(100), total_steps=10)
    s2.load_state_dict(st)
    assert s2.step == 3
    with pytest.raises(ValueError, match="not 'lognormal'"):
        timesteps.build("lognormal", DiscreteProcess.linear(100)).load_state_dict(st)


def test_registry_errors_name_parameter_value_and_allowed():
    p = DiscreteProcess.linear(100)
    with pytest.raises(ValueError, match=r"sampler.name='unifrom' is not known \(did you mean 'uniform'\?\)"):
        timesteps.build("unifrom", p)
    with pytest.raises(ValueError, match=r"sampler.P_mea.*did you mean 'P_mean'.*; allowed: P_mean, P_std$"):
        timesteps.build("lognormal", p, P_mea=1.0)
    # total_steps is the trainer's (it plans the sampler over `steps`): taken, but never offered as a setting
    with pytest.raises(
        ValueError, match=r"^sampler.foo is not a parameter of the 'uniform' sampler; allowed: none$"
    ):
        timesteps.build("uniform", p, total_steps=10, foo=1)
    with pytest.raises(ValueError, match=r"^sampler.total_step is not .*allowed: P_mean, P_std$"):
        timesteps.build("lognormal", p, total_step=10)
    with pytest.raises(ValueError, match="P_std=-1.*> 0"):
        timesteps.build("lognormal", p, P_std=-1)
    with pytest.raises(ValueError, match="total_steps=0"):
        timesteps.build("uniform", p, total_steps=0)
    with pytest.raises(ValueError, match="does not support a continuous process"):
        timesteps.build("logit-normal", EDMProcess())
    with pytest.raises(ValueError, match="batch_size=0"):
        timesteps.build("uniform", p).sample(0)
    assert {"uniform", "lognormal", "logit-normal"} <= set(timesteps.names())


def test_lognormal_edm_moments():
    s = timesteps.build("lognormal", EDMProcess(P_mean=-1.2, P_std=1.2))
    d = s.sample(200_000, generator=torch.Generator().manual_seed(0))
    ls = d.t.log()
    assert d.t.is_floating_point()
    assert ls.mean().item() == pytest.approx(-1.2, abs=0.02)
    assert ls.std().item() == pytest.approx(1.2, abs=0.02)


def test_lognormal_on_discrete_maps_to_nearest_sigma():
    p = DiscreteProcess.linear(1000)
    s = timesteps.build("lognormal", p)
    d = s.sample(5000, generator=torch.Generator().manual_seed(0))
    assert d.t.dtype == torch.long and d.t.min() >= 0 and d.t.max() < 1000
    # the median σ of the log-normal is e^{P_mean}; the median drawn t has σ(t) close to it
    sig = p.sigma(d.t)
    assert sig.log().median().item() == pytest.approx(-1.2, abs=0.05)


def test_logit_normal_distribution():
    T = 1000
    s = timesteps.build("logit-normal", DiscreteProcess.linear(T), mean=0.0, std=1.0)
    d = s.sample(100_000, generator=torch.Generator().manual_seed(0))
    u = (d.t.double() + 0.5) / T
    logit = torch.log(u / (1 - u))
    assert logit.mean().item() == pytest.approx(0.0, abs=0.02)
    assert logit.std().item() == pytest.approx(1.0, abs=0.03)
    # the density peaks in the middle: more mass in [400, 600) than in [0, 200)
    assert ((d.t >= 400) & (d.t < 600)).sum() > 2 * (d.t < 200).sum()


def test_uniform_on_edm_is_log_uniform():
    p = EDMProcess(sigma_min=0.01, sigma_max=100.0)
    d = timesteps.build("uniform", p).sample(100_000, generator=torch.Generator().manual_seed(0))
    ls = d.t.log()
    assert ls.min() >= math.log(0.01) - 1e-5 and ls.max() <= math.log(100) + 1e-5
    assert ls.mean().item() == pytest.approx(0.0, abs=0.03)


def test_device_argument_moves_results():
    d = timesteps.build("uniform", DiscreteProcess.linear(10)).sample(3, device="cpu")
    assert d.t.device.type == "cpu" and d.weight.dtype == torch.float32


# -- observe's one check (first-day trial: DDC, CLTS and SpeeD accepted any shape, DDC accepted NaN) -------------
@pytest.mark.parametrize("name", sorted(timesteps.REGISTRY))
@pytest.mark.parametrize(
    "loss_shape",
    [(8, 3), (4,), (), (8, 1, 8, 8), (8, 1)],
    ids=["8x3", "4", "scalar", "8x1x8x8", "8x1"],
)
def test_every_sampler_refuses_losses_that_are_not_one_per_sample(name, loss_shape):
    from diffusion_curriculum.process import DiscreteProcess

    s = timesteps.build(name, DiscreteProcess.linear(100), total_steps=100)
    t = s.sample(8, generator=torch.Generator().manual_seed(0)).t
    with pytest.raises(ValueError, match=r"observe got 8 timesteps but per-sample losses of shape"):
        s.observe(t, torch.ones(loss_shape))
    with pytest.raises(ValueError, match=r"observe expects t of shape \[B\]"):
        s.observe(t[:, None], torch.ones(8, 1))
    with pytest.raises(ValueError, match="observe expects tensors; per_sample_loss is a list"):
        s.observe(t, [1.0] * 8)
    assert s.step == 0  # nothing was counted
    s.observe(t, torch.ones(8))
    assert s.step == 1


def test_ddc_counts_no_step_for_a_non_finite_loss():
    """A non-finite batch mean (a step the trainer zeroes) is read late, like every loss, and not counted for the
    stage; the finite ones are, each observation window later."""
    from diffusion_curriculum.process import DiscreteProcess
    from diffusion_curriculum.timesteps import observations

    s = timesteps.build("ddc", DiscreteProcess.linear(100), total_steps=10_000)
    t = s.sample(4).t
    s.observe(t, torch.tensor([1.0, float("nan"), 1.0, 1.0]))
    for _ in range(2 * observations.WINDOW - 1):
        s.observe(t, torch.ones(4))
    assert s.step == 2 * observations.WINDOW
    assert (
        s.stage_steps == observations.WINDOW - 1
    )  # the first window is applied; its NaN step is not counted
