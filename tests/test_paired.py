"""Paired statistics of a comparison (diffusion_curriculum.paired), the seed pairing they rest on, and the
metric's noise (diffusion_curriculum.fd_noise)."""

import json
import math

import pytest
import torch

from conftest import TINY
from diffusion_curriculum import compare, config, fd_noise, paired, runlog
from diffusion_curriculum.train import Trainer
from diffusion_curriculum.training.hooks import Hook


# -- the seeds are paired ---------------------------------------------------------------------------------
class _Record(Hook):
    """Keeps every step's data indices, first x0 values and drawn noise levels."""

    def __init__(self):
        self.indices, self.x0, self.t = [], [], []

    def on_step(self, trainer, t, per_sample):
        self.t.append(t.detach().cpu().clone())

    def on_iteration(self, trainer):
        idx = trainer.batcher.last_indices.clone()
        self.indices.append(idx)
        self.x0.append(trainer.batcher.data.index_select(0, idx).cpu().clone())


def _first_steps(tmp_path, sampler: str, seed: int):
    """The initial weights of a 12-step run of ``sampler`` with ``seed``, and what it drew at each step."""
    cfg = config.resolve(overrides=TINY + ["steps=12", f"seed={seed}", f"sampler.name={sampler}"])
    trainer = Trainer(cfg, tmp_path / f"{sampler}-{seed}")
    init = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    rec = _Record()
    trainer.hooks.append(rec)
    trainer.run()
    return init, rec


def test_seed_s_of_every_sampler_shares_the_initial_weights_and_the_data_order(tmp_path):
    """What makes the per-seed pairing of `compare` meaningful: the model is built from the seed before the
    sampler, and the batches come from a stream of their own, which a sampler's draws do not touch."""
    init_u, u = _first_steps(tmp_path, "uniform", 3)
    for other in ("logit-normal", "ddc"):
        init_o, o = _first_steps(tmp_path, other, 3)
        assert init_o.keys() == init_u.keys()
        assert all(torch.equal(init_o[k], init_u[k]) for k in init_u), other
        assert len(o.indices) == len(u.indices) == 12
        assert all(torch.equal(a, b) for a, b in zip(o.indices, u.indices)), other
        assert all(torch.equal(a, b) for a, b in zip(o.x0, u.x0)), other
        assert any(not torch.equal(a, b) for a, b in zip(o.t, u.t)), f"{other} drew the same noise levels"
    # and another seed is another start and another order
    init_4, u4 = _first_steps(tmp_path, "uniform", 4)
    assert not all(torch.equal(init_4[k], init_u[k]) for k in init_u)
    assert not torch.equal(u4.indices[0], u.indices[0])


def test_compare_gives_seed_s_of_every_method_the_same_seed(tmp_path):
    methods = [compare.parse_method(m) for m in ("uniform", "ddc", "clts+mdlrc")]
    plans, seed_of = compare._plan_runs(methods, tmp_path, 3, None, None, TINY, 5)
    seeds = {}
    for p in plans:
        given = [o for o in p.overrides if o.startswith("seed=")]
        assert len(given) == 1
        seeds.setdefault(seed_of[p.label][1], set()).add(given[0])
    assert seeds == {0: {"seed=0"}, 1: {"seed=1"}, 2: {"seed=2"}}


# -- intervals and verdicts ---------------------------------------------------------------------------------
def test_t_interval_known_value():
    mean, half = paired.t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.3026527 / math.sqrt(3)) and half == pytest.approx(2.4841, abs=1e-4)
    with pytest.raises(ValueError, match="at least 2 values"):
        paired.t_interval([1.0])


def test_t_quantile_table_and_beyond():
    assert paired.t_quantile(1) == pytest.approx(12.7062, abs=1e-4)
    assert paired.t_quantile(2) == pytest.approx(4.3027, abs=1e-4)
    assert paired.t_quantile(30) == pytest.approx(2.0423, abs=1e-4)
    # the expansion beyond the table (exact values 2.000298, 1.979930, 1.962339)
    assert paired.t_quantile(60) == pytest.approx(2.000298, abs=1e-5)
    assert paired.t_quantile(120) == pytest.approx(1.979930, abs=1e-5)
    assert paired.t_quantile(1000) == pytest.approx(1.962339, abs=1e-5)
    assert paired.t_quantile(31) < paired.t_quantile(30)
    with pytest.raises(ValueError, match="at least 1 degree"):
        paired.t_quantile(0)


def test_verdict_needs_the_interval_to_exclude_no_change():
    s = paired.summarize_values({0: 1.5, 1: 1.6, 2: 1.7}, ratio=True, higher_is_better=True)
    assert s["low"] > 1 and s["verdict"] == "ahead"
    assert s["mean"] == pytest.approx((1.5 * 1.6 * 1.7) ** (1 / 3))  # geometric
    s = paired.summarize_values({0: 0.6, 1: 0.65, 2: 0.7}, ratio=True, higher_is_better=True)
    assert s["high"] < 1 and s["verdict"] == "behind"
    s = paired.summarize_values({0: 0.8, 1: 1.3, 2: 1.1}, ratio=True, higher_is_better=True)
    assert s["low"] < 1 < s["high"] and s["verdict"] == "level"
    # the ratio interval is the t interval of the log ratios, exponentiated
    logs = [math.log(v) for v in (0.8, 1.3, 1.1)]
    m, h = paired.t_interval(logs)
    assert (s["low"], s["high"]) == (pytest.approx(math.exp(m - h)), pytest.approx(math.exp(m + h)))
    # differences of a lower-is-better value: below 0 is ahead
    s = paired.summarize_values({0: -1.0, 1: -1.1, 2: -0.9}, ratio=False, higher_is_better=False)
    assert s["mean"] == pytest.approx(-1.0) and s["verdict"] == "ahead"
    assert (
        paired.summarize_values({0: 1.0, 1: 1.1, 2: 0.9}, ratio=False, higher_is_better=False)["verdict"]
        == "behind"
    )
    assert paired.verdict(-0.5, 0.5, 0.0, False) == "level" and paired.verdict(None, None, 0.0, False) == "–"


def test_two_seeds_give_a_mean_but_no_interval():
    s = paired.summarize_values({0: 2.0, 1: 2.2}, ratio=True, higher_is_better=True)
    assert s["mean"] == pytest.approx(math.sqrt(4.4)) and s["low"] is None and s["verdict"] == "–"
    assert paired.format_cell(s, ratio=True) == "2.10× (2 seeds, no interval)"
    one = paired.summarize_values({0: 2.0}, ratio=True, higher_is_better=True)
    assert paired.format_cell(one, ratio=True) == "2.00× (1 seed)"


def test_a_seed_not_reaching_leaves_the_target_without_an_interval():
    """The seed is named, not dropped: a mean over the seeds that reached would flatter the method."""
    s = paired.summarize_values({0: 1.5, 1: "n.r.", 2: 1.7}, ratio=True, higher_is_better=True)
    assert s["not_reached"] == [1] and s["mean"] is None and s["low"] is None and s["verdict"] == "–"
    assert s["per_seed"] == {0: 1.5, 1: "n.r.", 2: 1.7}
    assert paired.format_cell(s, ratio=True) == "n.r. (seed 1 of 3) –"


# -- targets and ratios ---------------------------------------------------------------------------------------
def test_targets_are_the_quality_at_25_50_75_100_percent_of_the_budget():
    curve = [(500, 32.0), (1000, 8.0), (1500, 4.0), (2000, 2.0)]
    t = paired.targets(curve)
    assert sorted(t) == [0.25, 0.5, 0.75, 1.0]
    assert t[0.5] == (1000, 8.0) and t[1.0] == (2000, 2.0)
    assert t[0.25] == (500, 32.0)
    assert t[0.75][0] == 1500 and t[0.75][1] == pytest.approx(4.0)
    # between evaluations: log-linear (the midpoint of 8 and 4 in log space is √32)
    assert paired.quality_at(curve, 1250) == pytest.approx(math.sqrt(32))
    assert paired.quality_at(curve, 400) is None and paired.quality_at(curve, 2100) is None
    # a budget whose 25 % falls before the first evaluation has no target there
    assert sorted(paired.targets([(2000, 8.0), (3000, 4.0), (4000, 2.0)])) == [0.5, 0.75, 1.0]


def test_step_ratios_at_each_target():
    ref = [(1000, 16.0), (2000, 8.0), (3000, 4.0), (4000, 2.0)]
    fast = [(1000, 8.0), (2000, 4.0), (3000, 2.0), (4000, 1.5)]  # one evaluation ahead everywhere
    r = paired.step_ratios(ref, fast)
    assert r[0.25] == pytest.approx(1.0)  # 16 is reached at the first evaluation by both
    assert r[0.5] == pytest.approx(2.0) and r[0.75] == pytest.approx(1.5)
    assert r[1.0] == pytest.approx(4000 / 3000)
    assert r[1.0] == pytest.approx(compare.speedup(ref, fast)["speedup"])  # 100 %: the existing speed-up
    slow = [(1000, 30.0), (2000, 20.0), (3000, 10.0), (4000, 5.0)]
    r = paired.step_ratios(ref, slow)
    at_8 = 3000 + 1000 * math.log(10 / 8) / math.log(10 / 5)  # log-linear between (3000, 10) and (4000, 5)
    assert r[0.5] == pytest.approx(2000 / at_8) and r[0.75] == "n.r." and r[1.0] == "n.r."


def test_paired_comparison_pairs_seed_s_with_seed_s():
    """Each seed of the reference has its own level; a method twice as fast on every seed is 2× on every
    seed only when seed s meets seed s."""
    ref, method = {}, {}
    for s, scale in enumerate((1.0, 3.0, 9.0)):
        ref[s] = [(k * 1000, scale * 2.0 ** (4 - k)) for k in range(1, 9)]
        method[s] = [(k * 500, scale * 2.0 ** (4 - k)) for k in range(1, 17)]
    finals = {"fd": ({0: 3.0, 1: 4.0, 2: 5.0}, {0: 2.0, 1: 3.1, 2: 3.9})}
    c = paired.paired_comparison(ref, method, finals)
    assert c["seeds"] == [0, 1, 2]
    assert c["target_steps"] == {0.25: 2000, 0.5: 4000, 0.75: 6000, 1.0: 8000}
    for f in paired.FRACTIONS:
        assert c["ratios"][f]["per_seed"] == {s: pytest.approx(2.0) for s in range(3)}
        assert c["ratios"][f]["verdict"] == "ahead"  # all seeds exactly 2: [2, 2]
    assert c["diffs"]["fd"]["per_seed"] == {0: -1.0, 1: pytest.approx(-0.9), 2: pytest.approx(-1.1)}
    assert c["diffs"]["fd"]["verdict"] == "ahead"
    # a seed the method has no curve for is not paired (and is seen in the seeds column)
    assert paired.paired_comparison(ref, {0: method[0], 1: method[1]})["seeds"] == [0, 1]


def test_paired_table_shows_targets_intervals_and_verdicts():
    ref = {s: [(1000, 8.0 + s), (2000, 4.0 + s), (3000, 3.0 + s), (4000, 2.5 + s)] for s in range(3)}
    fast = {s: [(1000, 6.0 + s), (2000, 3.5 + s), (3000, 2.6 + s), (4000, 2.0 + s)] for s in range(3)}
    stuck = {s: [(1000, 9.0 + s), (2000, 5.0 + s), (3000, 4.0 + s), (4000, 3.0 + s)] for s in range(3)}
    comps = {m: paired.paired_comparison(ref, c) for m, c in (("fast", fast), ("stuck", stuck))}
    table = paired.format_paired_table(comps, "uniform", "FD")
    head = table.splitlines()[0]
    for f, step in ((25, 1000), (50, 2000), (75, 3000), (100, 4000)):
        assert f"steps ratio at {f} % (FD@{step})" in head
    fast_row = next(r for r in table.splitlines() if r.startswith("| `fast`"))
    assert fast_row.count("ahead") == 3 and "| 0, 1, 2 |" in fast_row
    # 25 % is the first evaluation: both are there at step 1000, the ratio cannot show more than 1
    assert "| 1.00× [1.00, 1.00] level |" in fast_row
    stuck_row = next(r for r in table.splitlines() if r.startswith("| `stuck`"))
    assert "n.r. (seeds 0, 1, 2 of 3) –" in stuck_row
    assert table.endswith(paired.paired_note("uniform", "FD"))


# -- the metric's noise ----------------------------------------------------------------------------------------
def test_noise_line():
    ms = [{"key": "fd", "step": 10, "samples": 24, "seeds": [7, 8], "values": [3.0, 3.5]}]
    ms.append({"key": "fd", "step": 10, "samples": 24, "seeds": [7, 8], "values": [4.0, 3.9]})
    s = fd_noise.summary(ms)
    assert (
        s["mean_abs_diff"] == pytest.approx(0.3) and s["max_abs_diff"] == pytest.approx(0.5) and s["n"] == 2
    )
    line = fd_noise.noise_line(s)
    assert line.startswith("FD noise: the same checkpoint scored with two sample seeds differs by 0.3 ")
    assert "(mean |Δ| over 2 checkpoints, largest 0.5; 24 samples)" in line
    assert fd_noise.noise_line(None, "fd", "no file") == "FD noise: unknown (no file)."
    assert fd_noise.summary([]) is None


def test_noise_is_measured_on_the_final_checkpoint_with_the_next_seed(tmp_path):
    run = tmp_path / "r"
    over = ["steps=10", "checkpoint_every=5", "eval_every=10", "metrics.enabled=true", "eval.samples=24"]
    Trainer(config.resolve(overrides=TINY + over), run).run()
    curve = compare.quality_curve(runlog.read_metrics(run / "metrics.jsonl"), "fd")
    m = fd_noise.measure(run, "fd", curve, None)
    seed = config.resolve(overrides=TINY + over)["eval"]["seed"]
    assert m["step"] == 10 and m["samples"] == 24 and m["seeds"] == [seed, seed + 1]
    assert m["values"][0] == curve[-1][1]  # the run's own score
    assert m["values"][1] != m["values"][0]  # other samples, another score
    assert json.loads((run / "fd-noise-in-run.json").read_text()) == m
    # the second seed's score is what the run scores when its eval.seed is that seed
    assert fd_noise.score_with_seed(run, seed + 1)["fd"] == pytest.approx(m["values"][1])
    assert fd_noise.score_with_seed(run, seed)["fd"] == pytest.approx(curve[-1][1], rel=1e-6)
    # kept: not recomputed while newer than the newest checkpoint
    (run / "fd-noise-in-run.json").write_text(json.dumps({**m, "values": [1.0, 2.0]}))
    assert fd_noise.measure(run, "fd", curve, None)["values"] == [1.0, 2.0]
    assert not (run / "config.yaml").read_text().count(f"seed: {seed + 1}")  # the run itself is untouched


# -- benchmarks/ablation_table.py -----------------------------------------------------------------------------
def _ablation_table():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "ablation_table.py"
    spec = importlib.util.spec_from_file_location("ablation_table", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ablation_table_prints_paired_tables_and_the_noise_from_result_files(tmp_path, monkeypatch, capsys):
    tab = _ablation_table()
    monkeypatch.setattr(tab, "RESULTS", tmp_path)
    for m, speed in (("uniform", 1.0), ("fast", 2.0), ("other", 1.1)):
        for s in range(3):
            run = tmp_path / "grid" / "lin" / m / f"seed{s}"
            run.mkdir(parents=True)
            recs = [{"step": k, "fd": (1 + 0.1 * s) * 8000 / (speed * k) + 2} for k in range(500, 4001, 500)]
            (run / "eval-n1000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert tab.main(["--name", "grid", "--against", "other"]) == 0
    out = capsys.readouterr().out
    assert "Paired against `uniform`:" in out and "Paired against `other`:" in out
    assert "| steps ratio at 25 % (FD@1000) |" in out and "| final FD − uniform |" in out
    assert "FD noise: unknown (no fd-noise-n1000.json is committed under grid/lin/uniform/seed*)." in out
    noise = {"key": "fd", "step": 4000, "samples": 1000, "seeds": [0, 1], "values": [3.0, 3.2]}
    # without the baseline's, another method's measurements stand in, and the line names them
    for s, values in ((0, [2.0, 2.6]), (2, [2.1, 2.3])):
        f = tmp_path / "grid" / "lin" / "other" / f"seed{s}" / "fd-noise-n1000.json"
        f.write_text(json.dumps({**noise, "values": values}))
    assert tab.noise_text("grid", "lin", "uniform", 1000) == (
        "FD noise: the same checkpoint scored with two sample seeds differs by 0.4 (mean |Δ| over 2 checkpoints,"
        " largest 0.6; 1000 samples); a difference of FD below it is not resolved by this metric. Measured on the"
        " final checkpoints of `other`; none is committed for `uniform`."
    )
    (tmp_path / "grid" / "lin" / "uniform" / "seed0" / "fd-noise-n1000.json").write_text(json.dumps(noise))
    assert tab.main(["--name", "grid", "--against", "absent"]) == 0
    out = capsys.readouterr().out
    assert (
        "FD noise: the same checkpoint scored with two sample seeds differs by 0.2 (mean |Δ| over 1 checkpoint"
        in out
    )
    assert "No paired table against `absent`: the group has no such method." in out
    assert tab.noise_text("grid", "lin", "uniform", 1000, 1.5) == (
        "FD noise: unknown (compare measures it at the runs' own guidance, not at --guidance 1.5)."
    )
    with pytest.raises(SystemExit):
        tab.main(["--name", "grid", "--against", "uniform"])
    assert "--against uniform is the baseline already" in capsys.readouterr().err


def test_collect_takes_runs_copied_from_committed_files_which_have_no_metrics_log(tmp_path, monkeypatch):
    """A grid may reuse a baseline's committed result files (eval file and summary, no metrics.jsonl): collecting
    that grid copies them like the runs it trained, with the sampler status of the runs that have a log."""
    tab = _ablation_table()
    monkeypatch.setattr(tab, "RESULTS", tmp_path / "results")
    evals = json.dumps({"step": 500, "fd": 3.0}) + "\n"
    for method, log in (("uniform", None), ("ddc", json.dumps({"step": 10, "sampler": {"stage": 2}}) + "\n")):
        run = tmp_path / "grid" / "runs" / method / "seed0"
        run.mkdir(parents=True)
        (run / "eval-n1000.jsonl").write_text(evals)
        (run / "summary.json").write_text("{}")
        if log:
            (run / "metrics.jsonl").write_text(log)
    assert tab.collect("g", [f"lin={tmp_path / 'grid'}"], 1000) == 2
    kept = tmp_path / "results" / "g" / "lin"
    assert (kept / "uniform" / "seed0" / "eval-n1000.jsonl").read_text() == evals
    assert not (kept / "uniform" / "seed0" / "sampler-status.json").exists()
    assert json.loads((kept / "ddc" / "seed0" / "sampler-status.json").read_text()) == {"stage": 2}


def test_restore_rebuilds_committed_in_run_runs_that_compare_and_collect_read_back(tmp_path, monkeypatch):
    """--restore is the inverse of --collect: a run trained with in-run evaluations, collected and restored on a
    fresh machine, is finished for compare, its summary reads its curve, and collecting it again gives the same
    files; a run already in the folder is left untouched."""
    tab = _ablation_table()
    monkeypatch.setattr(tab, "RESULTS", tmp_path / "results")
    log = [
        {"step": 10, "loss": 0.5},
        {"step": 500, "eval_loss": 0.4, "fd": 9.5, "t_hist": [1, 2]},
        {"step": 1000, "eval_loss": 0.3, "fd": 6.25, "val_loss": 0.2},
        {"step": 1000, "sampler": {"stage": 2}},
    ]
    for method in ("uniform", "ddc"):
        run = tmp_path / "trained" / "runs" / method / "seed0"
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
        (run / "summary.json").write_text(json.dumps({"steps": 1000}))
    assert tab.collect("g", [f"flow={tmp_path / 'trained'}"], None) == 2
    untouched = tmp_path / "fresh" / "runs" / "ddc" / "seed0"
    untouched.mkdir(parents=True)
    assert tab.main(["--name", "g", "--restore", f"flow={tmp_path / 'fresh'}"]) == 0
    assert list(untouched.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "fresh" / "runs").glob("*/*")) == ["seed0", "seed0"]
    run = tmp_path / "fresh" / "runs" / "uniform" / "seed0"
    assert runlog.finished(run, 1000)
    results = compare.summarize(tmp_path / "fresh", ["uniform"], 1, fd_noise=False)
    assert results["methods"]["uniform"]["final_mean"] == 6.25
    kept = tmp_path / "results" / "g" / "flow" / "uniform" / "seed0"
    assert tab.collect("again", [f"flow={tmp_path / 'fresh'}"], None) == 1
    again = tmp_path / "results" / "again" / "flow" / "uniform" / "seed0"
    assert sorted(p.name for p in again.iterdir()) == sorted(p.name for p in kept.iterdir())
    assert all((again / p.name).read_bytes() == p.read_bytes() for p in kept.iterdir())
    with pytest.raises(SystemExit, match="expected GROUP=FOLDER with runs under"):
        tab.restore("g", ["lin=" + str(tmp_path / "fresh")])
    assert tab.restore("g", [f"flow={tmp_path / 'only'}"], ["uniform"]) == 1
    assert [p.name for p in (tmp_path / "only" / "runs").iterdir()] == ["uniform"]
    with pytest.raises(SystemExit, match=r"--only knn:k=4: no such method under .* \(it has ddc, uniform\)"):
        tab.restore("g", [f"flow={tmp_path / 'only'}"], ["uniform", "knn:k=4"])
