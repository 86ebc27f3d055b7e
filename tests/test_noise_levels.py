"""noise_levels: one mapping of a noise level to [0, 1) and to equal buckets, for both kinds of process."""

import math

import torch

from diffusion_curriculum import noise_levels
from diffusion_curriculum.process import DiscreteProcess, EDMProcess


def test_discrete_buckets_are_exact_integer_ranges():
    proc = DiscreteProcess.linear(T=1000)
    t = torch.arange(1000)
    b = noise_levels.bucket(proc, t, 20)
    assert torch.equal(b, t * 20 // 1000)
    assert int(b[50]) == 1 and int(b[49]) == 0  # the boundary at t = 50 is exact
    assert torch.allclose(noise_levels.position(proc, t), t.double() / 1000)
    edges, unit = noise_levels.bucket_edges(proc, 20)
    assert unit == "t" and edges[0] == 0 and edges[-1] == 1000 and len(edges) == 21


def test_edm_buckets_split_ln_sigma_evenly():
    proc = EDMProcess()
    edges, unit = noise_levels.bucket_edges(proc, 4)
    assert unit == "ln sigma"
    assert math.isclose(edges[0], math.log(proc.sigma_min)) and math.isclose(
        edges[-1], math.log(proc.sigma_max)
    )
    mids = torch.tensor([math.exp((a + b) / 2) for a, b in zip(edges, edges[1:])])
    assert noise_levels.bucket(proc, mids, 4).tolist() == [0, 1, 2, 3]
    outside = torch.tensor([proc.sigma_min / 10, proc.sigma_max * 10])
    assert noise_levels.bucket(proc, outside, 4).tolist() == [0, 3]
    assert noise_levels.position(proc, torch.tensor([proc.sigma_min], dtype=torch.float64)).item() == 0.0
