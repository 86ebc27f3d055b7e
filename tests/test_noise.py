"""Noise assignment: the independent draw, the nearest of k candidates, the batch assignment, and the trainer's
``noise`` key (resume, every process)."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from conftest import TINY, train_until_interrupted
from diffusion_curriculum import checkpoint, config, noise
from diffusion_curriculum.train import Trainer
from diffusion_curriculum.training import fingerprint


def _x0(b=64, seed=1):
    return torch.randn(b, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 0.5 + 0.3


def test_gaussian_is_the_plain_draw_bit_for_bit():
    x0 = _x0()
    got = noise.build("gaussian").draw(x0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(got, torch.randn(x0.shape, generator=torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("metric", ["l2", "angle"])
def test_knn_keeps_the_nearest_of_its_k_candidates(metric):
    x0, k = _x0(), 5
    got = noise.build("knn", k=k, metric=metric).draw(x0, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    cands = torch.stack([torch.randn(x0.shape, generator=g) for _ in range(k)])  # [k, B, ...]
    xf, cf = x0.flatten(1), cands.flatten(2)
    if metric == "l2":
        best = (xf[None] - cf).pow(2).sum(2).argmin(0)
    else:
        best = ((xf[None] * cf).sum(2) / cf.norm(dim=2)).argmax(0)
    assert torch.equal(got, cands[best, torch.arange(len(x0))])


def test_knn_with_one_candidate_is_the_gaussian_draw():
    x0 = _x0()
    a = noise.build("knn", k=1).draw(x0, generator=torch.Generator().manual_seed(2))
    b = noise.build("gaussian").draw(x0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


def test_knn_by_distance_shrinks_the_noise_and_by_angle_keeps_its_norm():
    """The measured side effect (docs/methods.md): the nearest of 8 by distance has E‖ε‖²/D well below 1; chosen
    by direction the norm keeps its χ distribution (mean 1 within the Monte Carlo error of 4096·64 values)."""
    x0 = torch.randn(4096, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.6
    g = torch.Generator().manual_seed(1)
    l2 = noise.build("knn", k=8).draw(x0, generator=g).pow(2).mean().item()
    angle = noise.build("knn", k=8, metric="angle").draw(x0, generator=g).pow(2).mean().item()
    assert l2 < 0.85 and abs(angle - 1) < 0.01


def test_assignment_permutes_the_batch_draw_to_the_least_total_distance():
    x0 = _x0(b=6)
    got = noise.build("assignment").draw(x0, generator=torch.Generator().manual_seed(5))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))

    def total(perm):
        return sum((x0[i] - eps[j]).pow(2).sum().item() for i, j in enumerate(perm))

    best = min(itertools.permutations(range(6)), key=total)
    assert torch.equal(got, eps[list(best)])


@pytest.mark.parametrize(
    ("name", "params", "words"),
    [
        ("knn", {"k": 0}, "noise.k=0 is invalid"),
        ("knn", {"metric": "cos"}, "noise.metric='cos' is invalid"),
        ("knn", {"kk": 2}, "noise.kk is not a parameter"),
        ("nearest", {}, "noise.name='nearest' is not known"),
        ("gaussian", {"k": 3}, "noise.k is not a parameter of the 'gaussian' noise; allowed: none"),
        ("assignment", {"args": 1}, "noise.args is not a parameter of the 'assignment' noise; allowed: none"),
    ],
)
def test_bad_noise_settings_are_one_sentence(name, params, words):
    with pytest.raises(ValueError, match=words) as e:
        noise.build(name, **params)
    assert "\n" not in str(e.value)


def test_a_bad_noise_section_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="noise.k=-1 is invalid"):
        Trainer(config.resolve(overrides=[*TINY, "noise.name=knn", "noise.k=-1"]), tmp_path)


def test_the_default_noise_keeps_the_fingerprint_of_runs_from_before_the_key():
    cfg = config.resolve(overrides=TINY)
    old = {k: v for k, v in cfg.items() if k != "noise"}
    assert fingerprint(cfg) == fingerprint(old)
    assert fingerprint({**cfg, "noise": {"name": "knn", "k": 4}}) != fingerprint(cfg)


def _losses(run):
    return [json.loads(x)["loss"] for x in open(run / "metrics.jsonl") if '"loss"' in x]


def test_a_knn_run_trains_a_different_run_and_resumes_exactly(tmp_path):
    cfg = config.resolve(overrides=[*TINY, "steps=20", "noise.name=knn", "noise.k=3"])
    Trainer(cfg, tmp_path / "a").run()
    train_until_interrupted(cfg, tmp_path / "b", 13)
    Trainer(cfg, tmp_path / "b", resume=True).run()
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    _, sa = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "a" / "checkpoints")[0])
    _, sb = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "b" / "checkpoints")[0])
    assert all(torch.equal(sa["ema"][k], sb["ema"][k]) for k in sa["ema"])
    Trainer(config.resolve(overrides=[*TINY, "steps=20"]), tmp_path / "plain").run()
    assert _losses(tmp_path / "plain") != _losses(tmp_path / "a")


@pytest.mark.parametrize(
    "overrides",
    [
        ["process.name=edm", "sampler.name=lognormal", "prediction=v"],
        ["process.name=flow", "sampler.name=logit-normal", "prediction=v", "eval.method=flow-euler"],
        ["prediction=x0"],
    ],
)
def test_every_process_trains_with_assigned_noise(tmp_path, overrides, monkeypatch):
    """The trainer's loss gets the assigned noise (the flow's velocity target included): the noise the loss sees
    is the assigner's draw."""
    from diffusion_curriculum import loss as loss_mod

    seen = []
    real = loss_mod.DenoisingLoss.error

    def spy(self, net, x0, noise_, t, **kw):
        seen.append((x0, noise_))
        return real(self, net, x0, noise_, t, **kw)

    monkeypatch.setattr(loss_mod.DenoisingLoss, "error", spy)
    cfg = config.resolve(overrides=[*TINY, "steps=3", "noise.name=assignment", *overrides])
    Trainer(cfg, tmp_path).run()
    x0, eps = seen[0]
    cost = (x0.flatten(1)[:, None] - eps.flatten(1)[None]).pow(2).sum(2)
    rows, cols = linear_sum_assignment(cost.double().numpy())  # the best pairing is the one trained on
    assert cost.diagonal().sum().item() == pytest.approx(cost[rows, cols].sum().item(), rel=1e-6)
