"""The trainer: the run directory it writes (config, metrics, samples, checkpoints, summary), and exact resume."""

import json

import pytest
import torch

from conftest import TINY, same_state, train_until_interrupted
from diffusion_curriculum import checkpoint, config
from diffusion_curriculum.errors import ConfigError
from diffusion_curriculum.train import Trainer, TrainingError


def _losses(run):
    return [
        json.loads(line)["loss"]
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]


def test_run_directory_layout(tmp_path):
    cfg = config.resolve(overrides=TINY)
    summary = Trainer(cfg, tmp_path / "run").run()
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and (run / "summary.json").is_file()
    assert config.validate(config.merge(config.DEFAULTS, config.load_yaml(run / "config.yaml"))) == cfg
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("step" in x for x in lines)
    assert [x["step"] for x in lines if "loss" in x] == [5, 10, 15, 20, 25, 30]
    assert any("eval_loss" in x for x in lines)
    assert (run / "samples" / "final.png").is_file() and (run / "samples" / "step_00000030.png").is_file()
    assert [p.name for p in checkpoint.list_checkpoints(run / "checkpoints")] == [
        "step_00000030",
        "step_00000020",
        "step_00000010",
    ]
    assert summary["steps"] == 30 and summary["final_loss"] == _losses(run)[-1]
    assert json.loads((run / "summary.json").read_text())["parameters"] > 0


def test_training_reduces_loss(tmp_path):
    cfg = config.resolve(overrides=TINY + ["steps=150", "checkpoint_every=0", "log_every=25", "lr=3e-3"])
    Trainer(cfg, tmp_path / "r").run()
    losses = _losses(tmp_path / "r")
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["optim.schedule=cosine", "optim.warmup_steps=5"],
        [
            "sampler.name=ddc",
            "sampler.clusters=4",
            "sampler.pacing=patience",
            "sampler.patience=4",
            "momentum.enabled=true",
        ],
        ["sampler.name=loss-second-moment", "sampler.history=1", "process.T=20", "weighting.name=min-snr"],
        ["sampler.name=learning-progress", "sampler.buckets=4", "weighting.name=edm2-uncertainty"],
    ],
    ids=["plain", "cosine-lr", "ddc-mdlrc", "importance", "learning-progress-edm2"],
)
def test_resume_is_exact(tmp_path, monkeypatch, extra):
    """Interrupt at step 17 (Ctrl-C writes a checkpoint), resume: the logged losses and final weights equal an
    unbroken run's to the bit."""
    cfg = config.resolve(overrides=TINY + ["model.dropout=0.1"] + extra)
    Trainer(cfg, tmp_path / "a").run()

    train_until_interrupted(cfg, tmp_path / "b", 17)
    assert checkpoint.list_checkpoints(tmp_path / "b" / "checkpoints")[0].name == "step_00000017"
    Trainer(cfg, tmp_path / "b", resume=True).run()

    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    _, sa = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "a" / "checkpoints")[0])
    _, sb = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "b" / "checkpoints")[0])
    for k in sa["ema"]:
        assert torch.equal(sa["ema"][k], sb["ema"][k]), k
    assert same_state(sa["sampler"], sb["sampler"])  # pending observations included
    assert sa["optimizer"]["param_groups"][0]["lr"] == sb["optimizer"]["param_groups"][0]["lr"]
    assert sa.get("weighting", {}).keys() == sb.get("weighting", {}).keys()
    for k, a in sa.get("weighting", {}).items():
        assert torch.equal(a, sb["weighting"][k]), k


def test_learned_weighting_trains_with_the_model_and_is_logged(tmp_path):
    cfg = config.resolve(overrides=TINY + ["weighting.name=edm2-uncertainty", "eval_every=30", "lr=0.01"])
    t = Trainer(cfg, tmp_path / "r")
    w = t.weight_fn
    groups = t.optimizer.param_groups
    assert len(groups) == 2 and groups[1]["weight_decay"] == 0.0 and groups[1]["lr"] == groups[0]["lr"]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in w.parameters()}
    assert torch.count_nonzero(w.u_weight) == 0  # u ≡ 0 before training
    t.run()
    assert torch.count_nonzero(w.u_weight) > 0  # it learned
    rec = [r for r in map(json.loads, open(tmp_path / "r" / "metrics.jsonl")) if "weighting_u" in r][-1]
    assert rec["step"] == 30 and len(rec["weighting_u"]) == 10
    _, state = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "r" / "checkpoints")[0])
    assert torch.equal(state["weighting"]["u_weight"], w.u_weight.detach().cpu())
    # a fixed weighting adds no group and no state: checkpoints of such runs are as they always were
    plain = Trainer(config.resolve(overrides=TINY + ["weighting.name=min-snr"]), tmp_path / "p")
    assert len(plain.optimizer.param_groups) == 1 and "weighting" not in plain.state()


def test_existing_run_needs_resume_and_nothing_is_lost(tmp_path):
    cfg = config.resolve(overrides=TINY + ["steps=10"])
    Trainer(cfg, tmp_path / "r").run()
    before = (tmp_path / "r" / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        Trainer(cfg, tmp_path / "r")
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == before


def test_resume_falls_back_past_a_corrupt_checkpoint(tmp_path, capsys):
    cfg = config.resolve(overrides=TINY + ["steps=20"])
    Trainer(cfg, tmp_path / "r").run()
    newest = checkpoint.list_checkpoints(tmp_path / "r" / "checkpoints")[0]
    (newest / checkpoint.TENSORS).write_bytes(b"garbage")
    msgs = []
    t = Trainer(config.resolve(overrides=TINY + ["steps=30"]), tmp_path / "r", resume=True, log=msgs.append)
    assert t.step == 10
    assert any("corrupt" in m for m in msgs) and any("newest usable" in m for m in msgs)


def test_resume_refuses_a_checkpoint_from_other_settings(tmp_path):
    Trainer(config.resolve(overrides=TINY + ["steps=10"]), tmp_path / "r").run()
    other = config.resolve(overrides=TINY + ["steps=10", "model.channels=16", "model.groups=8"])
    with pytest.raises(checkpoint.CheckpointError, match="different settings"):
        Trainer(other, tmp_path / "r", resume=True)


def test_nonfinite_loss_stops_with_the_step(tmp_path, monkeypatch):
    cfg = config.resolve(overrides=TINY + ["steps=20"])
    t = Trainer(cfg, tmp_path / "r")
    orig = t.model.forward
    calls = {"n": 0}

    def forward(x, tt):
        calls["n"] += 1
        out = orig(x, tt)
        return out * float("nan") if calls["n"] == 13 else out

    monkeypatch.setattr(t.model, "forward", forward)
    with pytest.raises(TrainingError, match="at step 13"):
        t.run()
    ck = checkpoint.list_checkpoints(tmp_path / "r" / "checkpoints")
    assert [p.name for p in ck] == ["step_00000010"]
    checkpoint.load(ck[0])  # the last good checkpoint is intact


def test_eval_logs_drawn_timestep_histogram_and_plot(tmp_path):
    cfg = config.resolve(overrides=TINY + ["eval_every=10", "sampler.name=logit-normal"])
    Trainer(cfg, tmp_path / "r").run()
    evals = [
        json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines() if "t_hist" in x
    ]
    assert [e["step"] for e in evals] == [10, 20, 30]
    for e in evals:
        assert sum(e["t_hist"]) == 10 * 16  # draws since the last evaluation
        assert len(e["t_hist_edges"]) == len(e["t_hist"]) + 1 and e["t_hist_edges"][-1] == 1000
    total = torch.tensor([e["t_hist"] for e in evals]).sum(0)
    assert total[8:12].sum() > total[:2].sum() + total[-2:].sum()  # logit-normal: mass in the middle
    assert (tmp_path / "r" / "timesteps.png").is_file()


def test_eval_reports_quality_metrics(tmp_path):
    cfg = config.resolve(overrides=TINY + ["metrics.enabled=true", "eval.samples=40", "eval_every=15"])
    Trainer(cfg, tmp_path / "r").run()
    evals = [
        json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines() if "eval_loss" in x
    ]
    assert [e["step"] for e in evals] == [15, 30]
    for e in evals:
        assert e["fd"] > 0 and 0 <= e["precision"] <= 1 and 0 <= e["recall"] <= 1
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["final_eval"]["fd"] == evals[-1]["fd"]


def test_toy_points_report_sliced_wasserstein(tmp_path):
    cfg = config.resolve(
        preset="toy2d",
        overrides=[
            "steps=20",
            "eval.samples=200",
            "eval.steps=5",
            "progress=false",
            "checkpoint_every=0",
            "model.hidden=32",
            "model.depth=1",
        ],
    )
    Trainer(cfg, tmp_path / "r").run()
    last = json.loads((tmp_path / "r" / "summary.json").read_text())["final_eval"]
    assert last["swd"] > 0 and "mmd" in last
    assert (tmp_path / "r" / "samples" / "final.png").is_file()


def test_tensorboard_needs_its_package(tmp_path):
    import importlib.util

    cfg = config.resolve(overrides=TINY + ["tensorboard=true", "steps=5"])
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ConfigError, match=r"tensorboard=true needs the tensorboard package"):
            Trainer(cfg, tmp_path / "r")
        assert not (tmp_path / "r").exists()
    else:
        Trainer(cfg, tmp_path / "r").run()
        assert any((tmp_path / "r" / "tensorboard").iterdir())


def test_logger_wandb_logs_scalars_sample_grids_and_noise_histograms_offline(tmp_path, monkeypatch):
    """``logger=wandb`` (issue 15 item 13): a 4-step run logged offline holds the training and evaluation
    scalars, the sample grids and the drawn-noise histograms; without the package, one sentence naming the extra."""
    import importlib.util

    cfg = config.resolve(overrides=TINY + ["logger=wandb", "steps=4", "log_every=2", "eval_every=2"])
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ConfigError, match=r"^logger=wandb needs the wandb package.*\[wandb\]'$"):
            Trainer(cfg, tmp_path / "r")
        assert not (tmp_path / "r").exists()
        pytest.skip("wandb is not installed (extra 'wandb'); its absence was checked")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    Trainer(cfg, tmp_path / "r").run()
    import wandb

    wandb.teardown()  # W&B's service process writes the rest of its record file when it stops
    (run,) = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    (log,) = run.glob("run-*.wandb")
    logged = log.read_bytes()  # W&B's record file: protobuf records with the keys and JSON values in clear
    for key in (b"loss", b"lr", b"eval_loss", b"t_hist", b'"histogram"', b'"image-file"', b"samples"):
        assert key in logged, key
    assert len(list((run / "files" / "media" / "images").glob("samples_*.png"))) == 2  # steps 2 and 4
    assert not (tmp_path / "r" / "wandb").exists()  # WANDB_DIR is honoured


def test_logger_wandb_without_the_package_is_one_sentence(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    cfg = config.resolve(overrides=TINY + ["logger=wandb", "steps=4"])
    with pytest.raises(
        ConfigError,
        match=r"^logger=wandb needs the wandb package, which is not installed: pip "
        r"install 'diffusion-curriculum\[wandb\]'$",
    ):
        Trainer(cfg, tmp_path / "r")
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match=r"^logger='mlflow' is invalid; allowed: none, tensorboard, wandb"):
        config.resolve(overrides=["logger=mlflow"])


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    """A finished run resumed with nothing to do says so and leaves metrics.jsonl and summary.json as they were
    (it used to evaluate again and append a second record of the last step)."""
    cfg = config.resolve(overrides=TINY + ["steps=10", "eval_every=5"])
    Trainer(cfg, tmp_path / "r", log=lambda _: None).run()
    metrics, summary = ((tmp_path / "r" / f).read_bytes() for f in ("metrics.jsonl", "summary.json"))
    said: list[str] = []
    again = Trainer(cfg, tmp_path / "r", resume=True, log=said.append).run()
    assert any("this run finished at step 10: nothing to do, nothing changed" in m for m in said), said
    assert (tmp_path / "r" / "metrics.jsonl").read_bytes() == metrics
    assert (tmp_path / "r" / "summary.json").read_bytes() == summary
    assert again == json.loads(summary)
    longer = Trainer(
        config.resolve(overrides=TINY + ["steps=12", "eval_every=5"]), tmp_path / "r", resume=True
    )
    assert longer.run()["steps"] == 12  # a larger budget still trains on


def test_a_new_run_at_a_reused_path_gets_a_new_wandb_id_and_a_resume_keeps_it(tmp_path, monkeypatch):
    """The W&B id is made when a run starts and kept in its directory (it used to be the hash of the path, so a
    new run at a reused path logged into the old W&B run)."""
    import shutil
    import sys
    import types

    ids: list[str] = []

    class FakeRun:
        def log(self, *a, **k):
            pass

        def finish(self):
            pass

    def init(**kw):
        ids.append(kw["id"])
        assert kw["resume"] == "allow"
        return FakeRun()

    import importlib.machinery

    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init, fake.Image, fake.Histogram = init, lambda *a, **k: None, lambda *a, **k: None
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = config.resolve(overrides=TINY + ["logger=wandb", "steps=4", "checkpoint_every=2"])
    out = tmp_path / "r"
    Trainer(cfg, out).run()
    shutil.rmtree(out)
    train_until_interrupted(cfg, out, 2)  # a new run at the same path, stopped after step 2
    Trainer(cfg, out, resume=True).run()
    assert len(ids) == 3 and ids[0] != ids[1] and ids[1] == ids[2], ids
    assert (out / "run_id").read_text().strip() == ids[1]


def test_without_metrics_an_evaluation_generates_only_the_grid(tmp_path, monkeypatch):
    """metrics.enabled=false: nothing measures the samples, so an evaluation draws the 64 the grid shows, not
    eval.samples (it drew 1000 to show 64, twice a short run's time)."""
    cfg = config.resolve(overrides=TINY + ["steps=2", "eval_every=2", "eval.samples=1000"])
    t = Trainer(cfg, tmp_path / "r", log=lambda m: None)
    drawn = []
    real = t.generate
    monkeypatch.setattr(t, "generate", lambda n=None: drawn.append(n) or real(n))
    t.run()
    assert drawn[0] == 64
