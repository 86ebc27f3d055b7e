"""The fixed per-noise-level validation loss, the held-out split, and the exact optimal loss of a finite set."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY
from diffusion_curriculum import config, data, noise_levels, optimal_loss, validation
from diffusion_curriculum import process as P
from diffusion_curriculum.data import DataError, Dataset
from diffusion_curriculum.train import Trainer
from diffusion_curriculum.training import rundir

PROCESSES = {
    "linear": P.build("linear"),
    "cosine": P.build("cosine"),
    "edm": P.build("edm"),
    "flow": P.build("flow"),
}
PREDICTIONS = ("eps", "x0", "v")


@pytest.mark.parametrize("name", PROCESSES)
def test_stratified_levels_lie_in_their_buckets_bucket_by_bucket(name):
    proc = PROCESSES[name]
    t = noise_levels.stratified(proc, 20, 7)
    assert t.shape == (140,)
    assert noise_levels.bucket(proc, t, 20).tolist() == torch.arange(20).repeat_interleave(7).tolist()


def test_stratified_levels_of_a_discrete_process_cover_uneven_buckets():
    proc = P.DiscreteProcess.linear(T=7)
    t = noise_levels.stratified(proc, 5, 3)
    assert noise_levels.bucket(proc, t, 5).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert t.tolist() == [0, 1, 1, 2, 2, 2, 3, 4, 4, 5, 5, 5, 6, 6, 6]


def _points(n: int = 50, d: int = 3, labels: bool = False, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2 if labels else None
    return Dataset(torch.randn(n, d, generator=g), y, "pts", "points")


def test_the_validation_set_is_fixed_by_its_seed_and_labelled_train_without_a_split():
    ds, proc = _points(), PROCESSES["linear"]
    a = validation.build(ds, proc, buckets=4, per_bucket=30, seed=5)
    b = validation.build(ds, proc, buckets=4, per_bucket=30, seed=5)
    c = validation.build(ds, proc, buckets=4, per_bucket=30, seed=6)
    assert a.on == "train" and a.x0.shape == (120, 3)
    assert torch.equal(a.x0, b.x0) and torch.equal(a.noise, b.noise) and torch.equal(a.t, b.t)
    assert not torch.equal(a.noise, c.noise)
    # every row is used once before any repeats (120 entries over 50 rows: each row 2 or 3 times)
    counts = torch.bincount(a.index, minlength=50)
    assert counts.min() >= 2 and counts.max() <= 3
    assert torch.equal(a.x0, ds.data[a.index])


def test_val_fraction_holds_out_a_split_that_does_not_depend_on_the_run_seed():
    full = data.load("digits")
    a = data.load("digits", val_fraction=0.1, seed=0)
    b = data.load("digits", val_fraction=0.1, seed=3)
    assert len(a.val_data) == round(0.1 * len(full)) and len(a) + len(a.val_data) == len(full)
    assert torch.equal(a.val_data, b.val_data) and torch.equal(a.data, b.data)
    rows = {tuple(x.flatten().tolist()) for x in full.data}
    assert all(tuple(x.flatten().tolist()) in rows for x in a.val_data)
    assert a.num_classes == full.num_classes and len(a.val_labels) == len(a.val_data)
    vset = validation.build(a, PROCESSES["linear"], buckets=2, per_bucket=4, seed=0)
    assert vset.on == "held-out" and torch.equal(vset.x0, a.val_data[vset.index])


@pytest.mark.parametrize(
    ("value", "words"), [(1.0, "in [0, 1)"), (-0.1, "in [0, 1)"), ("a", "in [0, 1)"), (0.9999, "leaves none")]
)
def test_a_bad_val_fraction_is_one_sentence_naming_it(value, words):
    with pytest.raises(DataError, match="dataset.val_fraction") as e:
        data.load("digits", n=10, val_fraction=value)
    assert words in str(e.value) and "\n" not in str(e.value)


# -- the optimal loss ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("pname", PROCESSES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_the_optimal_loss_of_one_point_is_zero(pname, prediction):
    proc = PROCESSES[pname]
    ds = _points(n=1, d=5)
    vset = validation.build(ds, proc, buckets=5, per_bucket=4, seed=1)
    assert optimal_loss.floor(proc, prediction, ds.data, vset).abs().max() < 1e-12


def _two_point_posterior(x1, x2, x0, noise, a, s):
    """p(x1 | x_t) of the two-point set, written out: the logistic of the two squared distances."""
    x_t = a * x0 + s * noise
    d1, d2 = (x_t - a * x1).pow(2).sum(), (x_t - a * x2).pow(2).sum()
    return float(torch.sigmoid((d2 - d1) / (2 * s * s)))


@pytest.mark.parametrize(
    ("pname", "prediction"), [("linear", "eps"), ("edm", "x0"), ("flow", "v"), ("cosine", "v")]
)
def test_the_optimal_loss_of_two_points_is_the_closed_form(pname, prediction):
    proc = PROCESSES[pname]
    ds = Dataset(torch.tensor([[1.0, -0.5, 0.25], [-0.3, 0.8, 0.6]]), None, "two", "points")
    x1, x2 = ds.data.double()
    vset = validation.build(ds, proc, buckets=10, per_bucket=3, seed=2)
    got = optimal_loss.floor(proc, prediction, ds.data, vset)
    a_all, s_all = optimal_loss.coefficients(proc, vset.t)
    for i in range(len(vset.t)):
        x0, noise, a, s = vset.x0[i].double(), vset.noise[i].double(), float(a_all[i]), float(s_all[i])
        p1 = _two_point_posterior(x1, x2, x0, noise, a, s)
        x0_err = x0 - (p1 * x1 + (1 - p1) * x2)  # x0 − E[x0 | x_t]
        # the error of the optimal output, per prediction: x0 directly; ε̂ − ε = a(x0 − x̂0)/s;
        if prediction == "x0":
            err = x0_err
        elif prediction == "eps":
            err = a / s * x0_err
        elif pname == "flow":  # v = ε − x0 = (x_t − a x0)/s − x0
            err = (a / s + 1) * x0_err
        else:  # VP v = a ε − s x0 = a (x_t − a x0)/s − s x0
            err = (a * a / s + s) * x0_err
        assert float(got[i]) == pytest.approx(float(err.pow(2).mean()), rel=1e-9, abs=1e-15)


def test_a_conditional_optimal_loss_uses_only_the_entrys_class():
    proc = PROCESSES["linear"]
    ds = Dataset(torch.tensor([[1.0, 2.0], [-1.0, 0.5]]), torch.tensor([0, 1]), "two", "points")
    vset = validation.build(ds, proc, buckets=4, per_bucket=4, seed=0)
    assert optimal_loss.floor(proc, "eps", ds.data, vset, ds.labels).abs().max() < 1e-12
    assert optimal_loss.floor(proc, "eps", ds.data, vset).max() > 1e-3  # unconditional: the classes mix


def test_the_optimal_loss_refuses_a_set_over_the_limit_in_one_sentence(monkeypatch):
    monkeypatch.setattr(optimal_loss, "MAX_WORK", 1000)
    ds = _points(n=50, d=3)
    vset = validation.build(ds, PROCESSES["linear"], buckets=4, per_bucket=4, seed=0)
    with pytest.raises(
        optimal_loss.OptimalLossError, match=r"needs 2\.4e\+03 multiply-adds, over the limit of 1e\+03"
    ):
        optimal_loss.floor(PROCESSES["linear"], "eps", ds.data, vset)


def test_the_optimal_loss_is_cached_by_the_data_and_the_process(tmp_path, monkeypatch):
    ds, proc = _points(), PROCESSES["linear"]
    vset = validation.build(ds, proc, buckets=4, per_bucket=4, seed=0)
    path = tmp_path / "floor.json"
    first = optimal_loss.cached_floor(path, proc, "eps", ds.data, vset)
    calls = []
    real = optimal_loss.floor
    monkeypatch.setattr(optimal_loss, "floor", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert optimal_loss.cached_floor(path, proc, "eps", ds.data, vset) == first and not calls
    optimal_loss.cached_floor(path, PROCESSES["cosine"], "eps", ds.data, vset)
    optimal_loss.cached_floor(path, proc, "v", ds.data, vset)
    optimal_loss.cached_floor(path, proc, "v", ds.data + 1, vset)
    assert len(calls) == 3


# -- in a run -------------------------------------------------------------------------------------------------
def _eval_records(run) -> list[dict]:
    return [r for r in rundir.read_metrics(run / "metrics.jsonl") if "eval_loss" in r]


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    """Two identical tiny digits runs evaluated every 15 steps, and the same run without the validation loss."""
    root = tmp_path_factory.mktemp("val")
    base = [*TINY, "eval_every=15", "eval.val_per_bucket=8"]
    for name, extra in (("a", []), ("b", []), ("off", ["eval.val_per_bucket=0"])):
        Trainer(config.resolve(overrides=[*base, *extra]), root / name).run()
    return root


def test_every_evaluation_logs_the_validation_loss_per_bucket_identically_across_runs(digits_runs):
    a, b = _eval_records(digits_runs / "a"), _eval_records(digits_runs / "b")
    assert [r["step"] for r in a] == [15, 30]
    for r in a:
        per = [r[f"val_loss/{k}"] for k in range(20)]
        assert r["val_loss"] == pytest.approx(sum(per) / 20, rel=1e-12)
        assert r["val_on"] == "train" and "val_x0_mse/19" in r and "val_excess/0" in r
    assert a == b
    summary = json.loads((digits_runs / "a" / "summary.json").read_text())
    assert summary["final_eval"]["val_loss/3"] == a[-1]["val_loss/3"]
    assert (digits_runs / "a" / "val_loss.png").stat().st_size > 0


def test_the_validation_loss_changes_nothing_else_in_a_run(digits_runs):
    def others(run):
        return [
            {k: v for k, v in r.items() if not k.startswith("val_") and k != "steps_per_s"}
            for r in rundir.read_metrics(run / "metrics.jsonl")
        ]

    assert others(digits_runs / "a") == others(digits_runs / "off")
    assert not any("val_loss" in r for r in _eval_records(digits_runs / "off"))


def test_the_optimal_loss_is_below_a_trained_models_loss_at_every_bucket(digits_runs):
    last = _eval_records(digits_runs / "a")[-1]
    excess = [last[f"val_excess/{k}"] for k in range(20)]
    assert min(excess) > 0
    floor = json.loads((digits_runs / "a" / "val_floor.json").read_text())["per_bucket"]
    assert floor[0] < 1e-6 < floor[-1]  # the least noisy bucket is solved by memorising; the noisiest is not


def test_a_held_out_run_is_labelled_and_has_no_excess(tmp_path):
    Trainer(
        config.resolve(overrides=[*TINY, "steps=10", "eval.val_per_bucket=4", "dataset.val_fraction=0.1"]),
        tmp_path,
    ).run()
    last = _eval_records(tmp_path)[-1]
    assert last["val_on"] == "held-out" and "val_loss/19" in last and "val_excess" not in last
    assert not (tmp_path / "val_floor.json").exists()


def test_a_resumed_run_reads_the_optimal_loss_back(tmp_path, monkeypatch):
    overrides = [*TINY, "eval_every=10", "eval.val_per_bucket=4"]
    Trainer(config.resolve(overrides=[*overrides, "steps=10"]), tmp_path).run()
    calls = []
    monkeypatch.setattr(optimal_loss, "floor", lambda *a, **k: calls.append(1))
    Trainer(config.resolve(overrides=[*overrides, "steps=20"]), tmp_path, resume=True).run()
    assert not calls and "val_excess" in _eval_records(tmp_path)[-1]


# -- analyze optimal-loss -------------------------------------------------------------------------------------
def test_analyze_optimal_loss_prints_the_floor_and_the_excess_per_bucket(digits_runs, tmp_path, capsys):
    from diffusion_curriculum.cli import main

    run = digits_runs / "a"
    assert (
        main(["analyze", "optimal-loss", "--run", str(run), "--steps", "10,30", "--out", str(tmp_path)]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split("\t") == [
        "bucket",
        "low",
        "high",
        "optimal",
        "loss@10",
        "excess@10",
        "loss@30",
        "excess@30",
        "left",
    ]
    rows = json.loads((tmp_path / "optimal-loss.json").read_text())["rows"]
    assert len(rows) == 20 and len(lines) == 22
    floor = json.loads((run / "val_floor.json").read_text())["per_bucket"]
    last = _eval_records(run)[-1]
    for k, row in enumerate(rows):
        assert row["optimal"] == pytest.approx(floor[k], rel=1e-12)
        assert row["loss@30"] == pytest.approx(last[f"val_loss/{k}"], rel=1e-5)  # the run's own final record
        assert row["excess@30"] == pytest.approx(row["loss@30"] - row["optimal"], abs=1e-12)
        assert row["left"] == pytest.approx(row["excess@30"] / row["excess@10"])
    assert (tmp_path / "optimal-loss.png").stat().st_size > 0


def test_analyze_optimal_loss_names_the_checkpoints_a_run_keeps(digits_runs, tmp_path, capsys):
    from diffusion_curriculum.cli import main

    assert main(["analyze", "optimal-loss", "--run", str(digits_runs / "a"), "--steps", "20,25"]) == 2
    err = capsys.readouterr().err
    assert "--steps 25: run" in err and "it keeps 10, 20, 30" in err
