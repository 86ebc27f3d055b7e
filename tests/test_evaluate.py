"""Offline evaluation of a run's checkpoints (``diffusion-curriculum evaluate``, ``compare --eval-samples``)."""

import json
import os
import shutil

import pytest

from conftest import TINY
from diffusion_curriculum import cli, compare, config, evaluate, runlog
from diffusion_curriculum.train import Trainer

RUN = TINY + ["steps=10", "checkpoint_every=5", "eval_every=10", "metrics.enabled=true", "eval.samples=24"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ev") / "r"
    Trainer(config.resolve(overrides=RUN), out).run()
    return out


def test_offline_equals_the_trainers_own_evaluation(run):
    """Same EMA weights, same sampler settings and noise seed, same sample count: the same numbers."""
    own = [r for r in runlog.read_metrics(run / "metrics.jsonl") if "fd" in r]
    assert own and own[-1]["step"] == 10
    recs = evaluate.evaluate_run(run, samples=24, log=lambda m: None)
    assert [r["step"] for r in recs] == [5, 10]
    for k in ("fd", "precision", "recall"):
        assert recs[-1][k] == pytest.approx(own[-1][k], rel=1e-6, abs=1e-9), k
    assert runlog.read_metrics(run / "eval-n24.jsonl") == recs


def test_more_samples_are_written_to_their_own_file_and_are_deterministic(run):
    a = evaluate.evaluate_run(run, samples=40, log=lambda m: None)
    b = evaluate.evaluate_run(run, samples=40, log=lambda m: None)
    assert a == b and all(r["samples"] == 40 for r in a)
    assert (run / "eval-n40.jsonl").is_file() and (run / "eval-n24.jsonl").is_file()


def test_cli_evaluate_and_its_errors(run, tmp_path, capsys):
    assert cli.main(["evaluate", "--run", str(run), "--samples", "24"]) == 0
    out = capsys.readouterr().out
    assert "step\tfd\tprecision\trecall" in out and "\n10\t" in out
    assert cli.main(["evaluate", "--run", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "not a run directory" in err
    assert cli.main(["evaluate", "--run", str(run), "--samples", "1"]) == 2
    assert "--samples" in capsys.readouterr().err


def test_compare_summary_with_eval_samples_reads_the_offline_evaluation(run, tmp_path):
    out = tmp_path / "cmp"
    for label in ("uniform", "other"):
        shutil.copytree(run, out / "runs" / label / "seed0")
    res = compare.summarize(out, ["uniform", "other"], 1, eval_samples=30, log=lambda m: None)
    assert res["metric"] == "fd" and res["eval_samples"] == 30
    copy = out / "runs" / "uniform" / "seed0"
    offline = runlog.read_metrics(copy / "eval-n30.jsonl")
    assert [r["step"] for r in offline] == [5, 10]
    assert res["methods"]["uniform"]["per_seed"][0]["final"] == pytest.approx(offline[-1]["fd"])
    assert res["methods"]["other"]["speedup_per_seed"] == [pytest.approx(1.0)]  # same weights, same curve
    for f in ("results-n30.csv", "results-n30.json", "quality-n30.png", "timesteps.png"):
        assert (out / f).is_file(), f
    assert json.loads((out / "results-n30.json").read_text())["eval_samples"] == 30
    # reused while newer than the newest checkpoint; recomputed after a new checkpoint
    mtime = (copy / "eval-n30.jsonl").stat().st_mtime_ns
    compare.summarize(out, ["uniform", "other"], 1, eval_samples=30, log=lambda m: None)
    assert (copy / "eval-n30.jsonl").stat().st_mtime_ns == mtime
    newest = sorted((copy / "checkpoints").iterdir())[-1]
    os.utime(newest, ns=(mtime + 10**9, mtime + 10**9))
    compare.summarize(out, ["uniform", "other"], 1, eval_samples=30, log=lambda m: None)
    assert (copy / "eval-n30.jsonl").stat().st_mtime_ns != mtime


def test_evaluate_with_every_checkpoint_corrupt_is_one_sentence_and_exit_2(run, tmp_path, capsys):
    """It used to exit 0 with an empty table and write an empty file."""
    copy = tmp_path / "r"
    shutil.copytree(run, copy)
    (copy / "eval-n24.jsonl").unlink(missing_ok=True)  # an earlier test's evaluation of the shared run
    for ck in (copy / "checkpoints").iterdir():
        (ck / "tensors.safetensors").write_bytes(b"garbage")
    assert cli.main(["evaluate", "--run", str(copy), "--samples", "24"]) == 2
    err = capsys.readouterr().err
    assert "none of the 2 checkpoints under" in err and "is usable" in err
    assert not (copy / "eval-n24.jsonl").exists()
