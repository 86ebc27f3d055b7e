"""The drop-in replacements of diffusers' SD3 timestep functions: diffusers' values for its own schemes, the
library's strategies by name, their observe call and their state."""

from __future__ import annotations

import pytest
import torch

from diffusion_curriculum import diffusers_compat as dc
from diffusion_curriculum import timesteps
from diffusion_curriculum.process import FlowProcess


@pytest.fixture(autouse=True)
def _fresh():
    dc.reset()
    yield
    dc.reset()


@pytest.mark.parametrize("scheme", ["logit_normal", "mode", "none", "sigma_sqrt", "cosmap"])
def test_diffusers_schemes_give_diffusers_values(scheme):
    training_utils = pytest.importorskip("diffusers.training_utils")
    kw = dict(weighting_scheme=scheme, batch_size=257, logit_mean=0.3, logit_std=1.2, mode_scale=1.29)
    ours = dc.compute_density_for_timestep_sampling(**kw, generator=torch.Generator().manual_seed(7))
    theirs = training_utils.compute_density_for_timestep_sampling(
        **kw, generator=torch.Generator().manual_seed(7)
    )
    assert torch.equal(ours, theirs)
    sigmas = torch.linspace(0.01, 0.99, 64).view(-1, 1, 1, 1)
    w_ours = dc.compute_loss_weighting_for_sd3(scheme, sigmas)
    w_theirs = training_utils.compute_loss_weighting_for_sd3(scheme, sigmas)
    assert torch.equal(w_ours, w_theirs)


def test_a_library_strategy_draws_its_own_u_and_returns_its_draw_weights(immediate_observations):
    sampler = dc.configure("loss-second-moment", history=1, buckets=4)
    twin = timesteps.build("loss-second-moment", FlowProcess(), history=1, buckets=4)
    for step in range(3):
        u = dc.compute_density_for_timestep_sampling(
            "loss-second-moment", 16, generator=torch.Generator().manual_seed(step)
        )
        draw = twin.sample(16, generator=torch.Generator().manual_seed(step))
        assert torch.equal(u, 1.0 - draw.t)
        sigmas = torch.rand(16, 1, 1, 1)
        w = dc.compute_loss_weighting_for_sd3("loss-second-moment", sigmas)
        assert w.shape == sigmas.shape and torch.equal(w[:, 0, 0, 0], draw.weight)
        loss = (u * 3).square()
        dc.observe("loss-second-moment", u, loss)
        twin.observe(draw.t, loss)
    assert torch.equal(sampler.probs(), twin.probs())  # observe gave the sampler its own t back
    assert sampler.step == 3 and not torch.all(w == 1)  # importance weights once every bucket is seen


def test_observe_moves_a_scheduled_strategy_and_its_state_resumes():
    dc.configure("curriculum-sampling", total_steps=4, switch=0.5)
    for _ in range(2):
        u = dc.compute_density_for_timestep_sampling("curriculum-sampling", 8)
        dc.observe("curriculum-sampling", u, torch.ones(8))
    saved = dc.state_dict()
    dc.reset()
    dc.load_state_dict(saved)
    assert dc._sampler("curriculum-sampling").uniform_phase()


def test_an_unknown_scheme_is_one_sentence():
    with pytest.raises(
        ValueError, match="weighting_scheme='logit-normall' is not known; allowed: logit_normal"
    ):
        dc.compute_density_for_timestep_sampling("logit-normall", 4)


def test_a_library_draw_reaches_the_noise_level_it_means_through_the_scripts_sigma_lookup():
    """The scripts index scheduler.sigmas (falling from 1, the noisiest) with (u * T): a library strategy's u must
    land on the sigma of its own draw, t' = shift(t), to within a table step, not on the mirrored one."""
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    proc = FlowProcess.from_scheduler(scheduler)
    dc.configure("lognormal")
    twin = timesteps.build("lognormal", FlowProcess())
    u = dc.compute_density_for_timestep_sampling(
        "lognormal", 2000, generator=torch.Generator().manual_seed(3)
    )
    t = twin.sample(2000, generator=torch.Generator().manual_seed(3)).t
    sigmas = scheduler.sigmas[(u * 1000).long().clamp(0, 999)]
    assert (sigmas - proc.shifted(t)).abs().max() < 0.01
