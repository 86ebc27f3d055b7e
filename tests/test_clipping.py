"""x̂0 clipping follows the data's range: [-1, 1] for images, none for 2-D points (issue 15 item 2), in the
trainer's evaluation sampling, ``sample`` and ``evaluate`` alike, with ``eval.clip`` to override it."""

import numpy as np
import pytest
import torch

from conftest import TINY
from diffusion_curriculum import config, data, generate
from diffusion_curriculum.errors import ConfigError
from diffusion_curriculum.training import Trainer, build_components

TOY = [
    "steps=4",
    "eval.samples=200",
    "eval.steps=5",
    "eval_every=0",
    "checkpoint_every=0",
    "progress=false",
    "metrics.enabled=false",
    "model.hidden=16",
    "model.depth=1",
]


def _at_edges(x: torch.Tensor) -> float:
    """The share of samples with a coordinate at exactly ±1 (where clipping to [-1, 1] piles them up)."""
    return float((x.abs() == 1.0).any(dim=1).float().mean())


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A 4-step toy2d run: its untrained model's x̂0 estimates are far outside [-1, 1]."""
    out = tmp_path_factory.mktemp("toy") / "r"
    trainer = Trainer(config.resolve(preset="toy2d", overrides=TOY), out)
    trainer.run()
    return trainer, out


def test_points_are_not_clipped_to_a_square_in_train_sample_and_evaluate(toy_run, tmp_path, monkeypatch):
    """The 8-Gaussians points lie outside [-1, 1]; samples used to be clamped onto the square's edges (85 %)."""
    from diffusion_curriculum import evaluate
    from diffusion_curriculum.cli import main

    trainer, out = toy_run
    x = trainer.generate()
    assert _at_edges(x) == 0.0 and x.abs().max() > 1.5
    assert trainer.clip is None and trainer.dataset.value_range is None
    npz = tmp_path / "s.npz"
    assert main(["sample", "--checkpoint", str(out), "--n", "100", "--npz", str(npz)]) == 0
    x = torch.from_numpy(np.load(npz)["images"])
    assert _at_edges(x) == 0.0 and x.abs().max() > 1.5
    seen = []
    real_sample = generate.sample
    monkeypatch.setattr(generate, "sample", lambda *a, **k: seen.append(real_sample(*a, **k)) or seen[-1])
    evaluate.evaluate_run(out, samples=50, log=lambda msg: None)
    assert len(seen) == 1 and _at_edges(seen[0]) == 0.0 and seen[0].abs().max() > 1.5


def test_eval_clip_overrides_the_datas_range(toy_run):
    trainer, _ = toy_run
    cfg = config.resolve(preset="toy2d", overrides=[*TOY, "eval.clip=[-1, 1]"])
    comps = build_components(cfg)
    assert comps.clip == (-1.0, 1.0)
    x = generate.sample(trainer.ema, comps.process, 100, (2,), steps=5, clip_x0=comps.clip)
    assert _at_edges(x) > 0.5  # what every toy2d run did before
    images = build_components(config.resolve(overrides=TINY))
    assert images.dataset.value_range == (-1.0, 1.0) and images.clip == (-1.0, 1.0)
    assert build_components(config.resolve(overrides=[*TINY, "eval.clip=false"])).clip is None


@pytest.mark.parametrize("value", ["true", "[1, -1]", "[0]", "maybe", "[0, .inf]"])
def test_a_bad_eval_clip_is_one_sentence(value):
    with pytest.raises(
        ConfigError, match=r"^eval\.clip=.* is invalid; allowed: auto .*false or \[low, high\]"
    ):
        config.resolve(overrides=[f"eval.clip={value}"])


def test_a_dataset_declares_its_range():
    pts = data.Dataset(torch.zeros(3, 2), None, "p", "points")
    img = data.Dataset(torch.zeros(3, 1, 2, 2), None, "i", "image")
    own = data.Dataset(torch.zeros(3, 2), None, "p", "points", value_range=(0, 5))
    assert (pts.value_range, img.value_range, own.value_range) == (None, (-1.0, 1.0), (0.0, 5.0))
    assert data.load("8gaussians", n=10).value_range is None
    assert data.load("digits", n=10).value_range == (-1.0, 1.0)
    with pytest.raises(ValueError, match="value_range=.* is not a range"):
        data.Dataset(torch.zeros(3, 2), None, "p", "points", value_range=(1, 1))
    with pytest.raises(ValueError, match=r"clip_x0=\(2, 1\) is not allowed"):
        generate.clip_bounds((2, 1))
