"""The trainer, evaluate, sample and compare with process.name=flow: end to end on digits, and exact resume."""

import json

import pytest
import torch

from conftest import TINY, same_state, train_until_interrupted
from diffusion_curriculum import checkpoint, cli, compare, config, evaluate
from diffusion_curriculum.errors import ConfigError
from diffusion_curriculum.train import Trainer, build_components

FLOW = TINY + ["process.name=flow", "process.shift=3.0", "prediction=v", "eval.method=auto"]


def _records(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_flow_on_digits_evaluates_with_the_flow_sampler(tmp_path):
    cfg = config.resolve(
        overrides=FLOW
        + [
            "eval_every=10",
            "sampler.name=logit-normal",
            "weighting.name=cosmap",
            "metrics.enabled=true",
            "eval.samples=24",
        ]
    )
    t = Trainer(cfg, tmp_path / "r")
    summary = t.run()
    recs = _records(tmp_path / "r")
    losses = [r["loss"] for r in recs if "loss" in r]
    assert len(losses) == 6 and all(0 < x < 10 for x in losses)
    evals = [r for r in recs if "t_hist" in r]
    assert [e["step"] for e in evals] == [10, 20, 30]
    assert evals[0]["t_hist_unit"] == "t" and evals[0]["t_hist_edges"][-1] == 1.0
    assert sum(evals[0]["t_hist"]) == 10 * 16
    assert all("fd" in e and e["fd"] > 0 for e in evals)
    assert summary["steps"] == 30 and (tmp_path / "r" / "samples" / "final.png").is_file()
    x = t.generate(4)
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()
    # offline evaluation and the sample command read the flow run back
    recs = evaluate.evaluate_run(tmp_path / "r", samples=24, log=lambda m: None)
    assert recs[-1]["step"] == 30 and recs[-1]["fd"] == pytest.approx(evals[-1]["fd"], rel=1e-6)
    png = tmp_path / "s.png"
    assert (
        cli.main(
            [
                "sample",
                "--checkpoint",
                str(tmp_path / "r"),
                "--n",
                "4",
                "--out",
                str(png),
                "--method",
                "flow-heun",
                "--steps",
                "3",
            ]
        )
        == 0
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        cli.main(
            ["sample", "--checkpoint", str(tmp_path / "r"), "--n", "4", "--out", str(png), "--method", "ddim"]
        )
        == 2
    )


def test_flow_config_errors_name_the_key():
    with pytest.raises(
        ConfigError, match=r"eval.method='ddim' needs a DiscreteProcess; use eval.method='flow-euler'"
    ):
        build_components(config.resolve(overrides=FLOW + ["eval.method=ddim"]))
    cfg = config.resolve("digits-flow")
    assert cfg["process"]["name"] == "flow" and cfg["prediction"] == "v" and cfg["eval"]["method"] == "auto"
    with pytest.raises(ValueError, match="shift > 0"):
        build_components(config.resolve(overrides=FLOW + ["process.shift=-1"]))
    with pytest.raises(ValueError, match="process.T is not a parameter of the 'flow' process"):
        build_components(config.resolve(overrides=FLOW + ["process.T=10"]))
    with pytest.raises(ValueError, match="cosmap' needs a flow process"):
        build_components(config.resolve(overrides=TINY + ["weighting.name=cosmap"]))


@pytest.mark.parametrize(
    "extra",
    [
        ["sampler.name=logit-normal", "weighting.name=min-snr"],
        [
            "sampler.name=ddc",
            "sampler.clusters=4",
            "sampler.pacing=patience",
            "sampler.patience=2",
            "sampler.joint=loss-second-moment",
        ],
        ["sampler.name=learning-progress", "sampler.buckets=4", "weighting.name=edm2-uncertainty"],
    ],
    ids=["logit-normal", "ddc-importance", "learning-progress-edm2"],
)
def test_flow_resume_is_exact(tmp_path, monkeypatch, extra):
    """Interrupt a flow run at step 17, resume: the logged losses and final weights equal an unbroken run's."""
    cfg = config.resolve(overrides=FLOW + ["model.dropout=0.1"] + extra)
    Trainer(cfg, tmp_path / "a").run()
    train_until_interrupted(cfg, tmp_path / "b", 17)
    Trainer(cfg, tmp_path / "b", resume=True).run()
    la = [r["loss"] for r in _records(tmp_path / "a") if "loss" in r]
    assert la == [r["loss"] for r in _records(tmp_path / "b") if "loss" in r]
    _, sa = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "a" / "checkpoints")[0])
    _, sb = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "b" / "checkpoints")[0])
    for k in sa["ema"]:
        assert torch.equal(sa["ema"][k], sb["ema"][k]), k
    assert same_state(sa["sampler"], sb["sampler"])
    assert same_state(sa.get("weighting", {}), sb.get("weighting", {}))


def test_compare_runs_on_flow(tmp_path):
    out = tmp_path / "cmp"
    res = compare.compare(
        ["uniform", "logit-normal"],
        out=out,
        seeds=1,
        steps=10,
        overrides=FLOW + ["eval_every=5"],
        jobs=1,
        log=lambda m: None,
    )
    assert set(res["methods"]) == {"uniform", "logit-normal"}
    assert res["methods"]["uniform"]["speedup_per_seed"] == [pytest.approx(1.0)]
    cfg = config.load_yaml(out / "runs" / "logit-normal" / "seed0" / "config.yaml")
    assert cfg["process"]["name"] == "flow" and cfg["sampler"]["name"] == "logit-normal"


def test_analyses_that_need_a_vp_or_edm_grid_refuse_flow_in_one_sentence(tmp_path):
    from diffusion_curriculum.analysis import entropy

    with pytest.raises(ConfigError, match="analyze entropy needs a discrete or EDM process"):
        entropy.run(config.resolve("digits-flow"), tmp_path / "e")
