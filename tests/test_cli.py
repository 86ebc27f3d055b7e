"""The command line, end to end in subprocesses: exit codes, one-sentence errors, run directories."""

import json
import os
import subprocess
import sys

import pytest

from conftest import TINY

ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": os.pathsep.join(
        [os.path.join(os.path.dirname(__file__), "..", "src"), os.environ.get("PYTHONPATH", "")]
    ),
}


def cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "diffusion_curriculum", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )


def test_train_then_resume_then_sample(tmp_path):
    out = tmp_path / "run"
    r = cli("train", "--out", str(out), *TINY, "steps=20")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 20
    for f in ("config.yaml", "metrics.jsonl", "summary.json", "samples/final.png"):
        assert (out / f).is_file(), f
    # extend the finished run by 10 steps
    r = cli("train", "--out", str(out), "--resume", "steps=30")
    assert r.returncode == 0, r.stderr
    assert "resumed from step_00000020" in r.stderr
    assert json.loads((out / "summary.json").read_text())["steps"] == 30
    png = tmp_path / "s.png"
    r = cli("sample", "--checkpoint", str(out), "--n", "4", "--out", str(png), "--steps", "3")
    assert r.returncode == 0, r.stderr
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args,needle",
    [
        (["stepz=3"], "unknown key 'stepz' (did you mean 'steps'?)"),
        (["lr=-1"], "lr=-1 is invalid"),
        (["sampler.name=ddcc"], "sampler.name='ddcc' is not known"),
        (["sampler.patience=3"], "sampler.patience is not a parameter of the 'uniform' sampler"),
        (["model.chanels=3"], "model.chanels"),
        (["dataset.name=mnist"], "mnist"),
        (["dataset.name=npz"], "dataset.path"),
        (["process.T=0"], "process.T must be an integer >= 2, got 0"),
        (
            ["sampler.nme=ddc"],
            "sampler.nme is not a parameter of the 'uniform' sampler (did you mean 'name'?)",
        ),
        (["sampler.name=ddc", "sampler.total_steps=5"], "sampler.total_steps=5 cannot be set here"),
        (["--preset", "nope"], "preset 'nope' is not known"),
        (["--config", "/nonexistent.yaml"], "does not exist"),
        (["device=cuda:0"], "no CUDA GPU is available"),
        (["weighting.name=bogus"], "weighting.name='bogus' is not known"),
    ],
)
def test_bad_input_is_one_sentence_exit_2(tmp_path, args, needle):
    out = tmp_path / "run"
    r = cli("train", "--out", str(out), *args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert not out.exists()  # nothing written for a run that never started


def test_resume_rejects_changed_settings(tmp_path):
    out = tmp_path / "run"
    assert cli("train", "--out", str(out), *TINY, "steps=10").returncode == 0
    r = cli("train", "--out", str(out), "--resume", "lr=0.5")
    assert r.returncode == 2 and "lr cannot change when resuming" in r.stderr
    r = cli("train", "--out", str(out), *TINY, "steps=10")
    assert r.returncode == 2 and "already holds a run" in r.stderr


def test_resume_with_the_preset_accepts_a_saved_choice_where_the_preset_says_auto(tmp_path):
    """A run that saved a concrete value where its preset now says ``auto`` (model.attention_resolutions was [4]
    in the digits preset before it became ``auto``) resumes with that preset; a real change is still refused."""
    out = tmp_path / "run"
    tiny = [a for a in TINY if not a.startswith("model.attention_resolutions")]
    r = cli(
        "train", "--out", str(out), "--preset", "digits", *tiny, "model.attention_resolutions=[4]", "steps=10"
    )
    assert r.returncode == 0, r.stderr
    r = cli("train", "--out", str(out), "--resume", "--preset", "digits", *tiny, "steps=20")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "summary.json").read_text())["steps"] == 20
    r = cli("train", "--out", str(out), "--resume", "--preset", "toy2d", "steps=30")
    assert r.returncode == 2 and "with different settings for" in r.stderr and "model" in r.stderr, r.stderr


def test_same_setting_treats_a_given_auto_as_the_saved_choice():
    from diffusion_curriculum.config import same_setting

    assert same_setting({"a": "auto", "b": 1}, {"a": [4], "b": 1})
    assert not same_setting({"a": "auto", "b": 1}, {"a": [4], "b": 2})
    assert not same_setting({"a": [8]}, {"a": [4]})
    assert not same_setting({"a": 1}, {"a": 1, "extra": 2})
    assert same_setting("auto", None) and not same_setting(None, "auto")


def test_help_and_presets():
    r = cli("--help")
    assert r.returncode == 0 and "train" in r.stdout and "sample" in r.stdout
    r = cli("presets")
    assert r.returncode == 0 and "digits" in r.stdout.split()
    rows = dict(line.split(None, 1) for line in r.stdout.splitlines())  # each name with what it is
    assert rows["toy2d"].startswith("2-D toy data (8 Gaussians)") and all(rows.values()), r.stdout
    r = cli()
    assert r.returncode == 2


def test_every_registered_sampler_trains_from_the_cli_on_digits(tmp_path, capsys):
    """Every registry name trains on digits through the CLI (in-process, a few steps each), with its default
    parameters; the run directory records the sampler that was used."""
    from diffusion_curriculum import cli as cli_mod
    from diffusion_curriculum import timesteps

    names = timesteps.names()
    assert {"uniform", "ddc", "clts", "speed", "loss-second-moment", "lognormal", "logit-normal"} <= set(
        names
    )
    for name in names:
        out = tmp_path / name
        rc = cli_mod.main(
            ["train", "--out", str(out), *TINY, "steps=4", "log_every=2", f"sampler.name={name}"]
        )
        err = capsys.readouterr().err
        assert rc == 0, (name, err)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["steps"] == 4 and summary["final_eval"]["step"] == 4, (name, summary)
        assert f"name: {name}" in (out / "config.yaml").read_text(), name


def test_overrides_and_options_in_any_order():
    """argparse alone takes one run of positionals: ``train seed=3 --out DIR steps=40`` used to fail with
    "unrecognized arguments: steps=40"."""
    from diffusion_curriculum import cli as cli_mod

    args = cli_mod.parse_args(["train", "seed=3", "--out", "DIR", "steps=40", "--resume", "lr=0.01"])
    assert args.out == "DIR" and args.resume
    assert args.overrides == ["seed=3", "steps=40", "lr=0.01"]
    args = cli_mod.parse_args(["compare", "seed=1", "--methods", "uniform,ddc", "steps=5", "--seeds", "2"])
    assert args.methods == "uniform,ddc" and args.seeds == 2 and args.overrides == ["seed=1", "steps=5"]
    args = cli_mod.parse_args(["analyze", "entropy", "seed=2", "--stride", "5", "steps=7"])
    assert args.stride == 5 and args.overrides == ["seed=2", "steps=7"]
    with pytest.raises(SystemExit) as e:  # an unknown option is still refused
        cli_mod.parse_args(["train", "seed=3", "--otu", "DIR"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):  # a command without overrides takes none
        cli_mod.parse_args(["sample", "--checkpoint", "X", "seed=3"])


def test_train_with_an_override_after_an_option(tmp_path):
    out = tmp_path / "run"
    r = cli("train", "seed=3", "--out", str(out), *TINY, "steps=10")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["steps"] == 10
    assert "seed: 3" in (out / "config.yaml").read_text()


def test_library_warnings_print_as_one_plain_line(tmp_path):
    """The DDC budget warning used to print a file path and a source line ("base.py:181: UserWarning ...")."""
    r = cli(
        "train",
        "--out",
        str(tmp_path / "r"),
        *TINY,
        "sampler.name=ddc",
        "sampler.pacing=patience",
        "sampler.patience=50",
    )
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if "curriculum stages need" in x]
    assert len(lines) == 1 and lines[0].startswith("warning: ddc: the 20 curriculum stages need"), r.stderr
    assert "UserWarning" not in r.stderr and ".py:" not in r.stderr


def test_resume_into_a_directory_without_a_run_is_refused_and_writes_nothing(tmp_path):
    """A typo in the --resume path used to start a whole new run there, next to whatever was in the folder."""
    missing = tmp_path / "typo"
    r = cli("train", "--out", str(missing), "--resume", *TINY)
    assert r.returncode == 2 and "does not exist" in r.stderr and "--resume-if-present" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not missing.exists()
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.txt").write_text("mine")
    for folder in (foreign, tmp_path / "empty"):
        folder.mkdir(exist_ok=True)
        r = cli("train", "--out", str(folder), "--resume", *TINY)
        assert r.returncode == 2 and "holds no run" in r.stderr, r.stderr
    assert sorted(p.name for p in foreign.iterdir()) == ["cat.txt"]
    assert not list((tmp_path / "empty").iterdir())
    # the scheduler's form: start when nothing is there, resume when a run is
    r = cli("train", "--out", str(tmp_path / "empty"), "--resume-if-present", *TINY, "steps=10")
    assert r.returncode == 0, r.stderr
    r = cli("train", "--out", str(tmp_path / "empty"), "--resume-if-present", *TINY, "steps=20")
    assert r.returncode == 0 and "resumed from step_00000010" in r.stderr, r.stderr


def test_sample_refuses_zero_steps(tmp_path, capsys):
    from diffusion_curriculum.cli import main

    assert main(["sample", "--checkpoint", str(tmp_path), "--steps", "0"]) == 2
    err = capsys.readouterr().err
    assert "--steps 0 is invalid" in err


def test_final_line_has_the_final_quality_and_a_loss_for_runs_shorter_than_log_every(tmp_path):
    """The last stdout line lacked the final quality (only in summary.json) and said "final_loss": null for a
    run shorter than log_every; evaluations now say so as they start."""
    r = cli(
        "train",
        "--preset",
        "toy2d",
        "--out",
        str(tmp_path / "r"),
        "steps=6",
        "log_every=50",
        "eval_every=3",
        "eval.samples=64",
        "eval.steps=4",
        "progress=false",
        "batch_size=32",
    )
    assert r.returncode == 0, r.stderr
    final = json.loads(r.stdout.strip().splitlines()[-1])
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert final["steps"] == 6 and isinstance(final["final_loss"], float)
    assert final["final_loss"] == summary["final_loss"]
    for k in ("eval_loss", "swd", "mmd"):
        assert final[k] == summary["final_eval"][k], k
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("evaluating")] == [
        "evaluating at step 3 (64 samples)...",
        "evaluating at step 6 (64 samples)...",
    ], r.stderr


def test_the_feature_nets_training_on_first_use_is_announced_and_a_cached_one_is_not(tmp_path, monkeypatch):
    """The ~15 s in which the quality metrics train their feature net on first use used to be silent; then
    "loading/training the feature net" was said on every run, also when the net came from the cache."""
    import torch

    from diffusion_curriculum import data, metrics
    from diffusion_curriculum.metrics import feature_nets
    from diffusion_curriculum.training import hooks

    monkeypatch.setenv("DIFFUSION_CURRICULUM_CACHE", str(tmp_path / "cache"))
    real_train = feature_nets.train_feature_net
    monkeypatch.setattr(
        feature_nets, "train_feature_net", lambda *a, **k: real_train(*a, **{**k, "steps": 3})
    )
    ds = data.load("digits", n=300)
    cfg = {"n_real": None, "inception_weights": None}
    said = []
    hooks.QualityMetrics(ds, cfg, torch.device("cpu"), said.append)  # first use: trains and caches
    assert said[0].startswith("quality metrics: training the feature net for FD on first use")
    assert said[1].startswith("quality metrics: feature net trained in") and len(said) == 2
    for forget in (False, True):  # from this process's memo, then from the disk cache
        if forget:
            metrics.clear_memo()
        said.clear()
        hooks.QualityMetrics(ds, cfg, torch.device("cpu"), said.append)
        assert said == [], forget
    hooks.QualityMetrics(data.load("8gaussians", n=200), cfg, torch.device("cpu"), said.append)
    assert said == []  # points have no feature net


def test_analyze_difficulty_help_names_the_mode_default(capsys):
    from diffusion_curriculum import cli as cli_mod

    with pytest.raises(SystemExit):
        cli_mod.main(["analyze", "difficulty", "--help"])
    assert "(default per-interval)" in " ".join(capsys.readouterr().out.split())


def test_train_ends_with_a_sentence_naming_its_fd_and_samples(tmp_path):
    from diffusion_curriculum.cli.commands import result_sentence

    summary = {"steps": 4000, "train_time_s": 540.0, "final_eval": {"fd": 3.1234, "val_loss": 0.05}}
    line = result_sentence(summary, tmp_path, 1000)
    assert line.startswith("done: 4000 steps (9.0 min of training); FD 3.12 of 1000 samples")
    assert line.endswith(f"samples: {tmp_path / 'samples'}")
    assert "validation loss 0.05 (no sample metric" in result_sentence(
        {"steps": 5, "train_time_s": 1.0, "final_eval": {"val_loss": 0.05}}, tmp_path, 8
    )
