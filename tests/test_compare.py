"""compare: method parsing, the speed-up computation on synthetic curves, and a tiny end-to-end run."""

import json
import math

import pytest

from conftest import TINY
from diffusion_curriculum import compare
from diffusion_curriculum.errors import ConfigError


def test_parse_method_parts():
    m = compare.parse_method("ddc:clustering=snr,patience=50")
    assert m.overrides == ["sampler.name=ddc", "sampler.clustering=snr", "sampler.patience=50"]
    m = compare.parse_method("lognormal+min-snr:gamma=3")
    assert m.overrides == ["sampler.name=lognormal", "weighting.name=min-snr", "weighting.gamma=3"]
    m = compare.parse_method("loss-second-moment+knn:k=4,metric=angle")
    assert m.overrides == [
        "sampler.name=loss-second-moment",
        "noise.name=knn",
        "noise.k=4",
        "noise.metric=angle",
    ]
    m = compare.parse_method("toy2d")
    assert m.preset == "toy2d" and m.overrides == []
    with pytest.raises(ConfigError, match="'ddx'.*did you mean 'ddc'"):
        compare.parse_method("ddx")
    with pytest.raises(ConfigError, match="key=value"):
        compare.parse_method("ddc:patience")
    assert compare.run_dir_name("ddc:clustering=snr,patience=50") == "ddc_clustering=snr_patience=50"


def test_steps_to_reach_interpolates_in_log_space():
    curve = [(100, 8.0), (200, 2.0), (300, 1.0)]
    # log-linear between (100, 8) and (200, 2): reaches 4 at the midpoint of log 8 .. log 2
    assert compare.steps_to_reach(curve, 4.0) == pytest.approx(150.0)
    assert compare.steps_to_reach(curve, 1.0) == pytest.approx(300.0)
    assert compare.steps_to_reach(curve, 8.0) == pytest.approx(100.0)
    assert compare.steps_to_reach(curve, 0.5) is None
    q = math.exp((math.log(2) + math.log(1)) / 2)
    assert compare.steps_to_reach(curve, q) == pytest.approx(250.0)


def test_speedup_known_crossings_and_not_reached():
    base = [(1000, 10.0), (2000, 5.0), (3000, 4.0), (4000, 4.0)]  # reaches its final 4.0 at step 3000
    fast = [(1000, 6.0), (2000, 4.0), (3000, 3.0), (4000, 2.5)]  # reaches 4.0 at 2000
    slow = [(1000, 20.0), (2000, 9.0), (3000, 6.0), (4000, 4.5)]
    r = compare.speedup(base, fast)
    assert r["target"] == 4.0 and r["baseline_steps"] == 3000 and r["method_steps"] == 2000
    assert r["speedup"] == pytest.approx(1.5)
    assert compare.speedup(base, slow)["speedup"] == "not reached"
    assert compare.speedup(base, base)["speedup"] == pytest.approx(1.0)
    # a baseline that dipped below its final value earlier reaches it earlier than B
    dip = [(1000, 5.0), (2000, 3.0), (3000, 4.0)]
    assert compare.speedup(dip, dip)["baseline_steps"] == pytest.approx(
        1000 + 1000 * math.log(5 / 4) / math.log(5 / 3)
    )


def test_compare_end_to_end_tiny(tmp_path):
    out = tmp_path / "cmp"
    common = dict(out=out, seeds=2, steps=20, overrides=TINY + ["eval_every=10"], jobs=2, log=lambda m: None)
    res = compare.compare(["uniform", "logit-normal"], **common)
    assert res["metric"] == "eval_loss"
    assert set(res["methods"]) == {"uniform", "logit-normal"}
    u = res["methods"]["uniform"]
    assert u["speedup_per_seed"] == [pytest.approx(1.0), pytest.approx(1.0)]
    for f in ("results.csv", "results.json", "quality.png", "timesteps.png"):
        assert (out / f).is_file(), f
    assert json.loads((out / "results.json").read_text())["seeds"] == 2
    header = (out / "results.csv").read_text().splitlines()[0]
    assert header.startswith("method,final_eval_loss_mean") and header.endswith(",machine_steps_per_s")
    # resumable: a second call reuses the finished runs (nothing retrained: metrics files unchanged)
    before = (out / "runs" / "uniform" / "seed0" / "metrics.jsonl").read_text()
    msgs = []
    compare.compare(["uniform", "logit-normal"], **{**common, "log": msgs.append})
    assert "4 already finished" in msgs[0]
    assert (out / "runs" / "uniform" / "seed0" / "metrics.jsonl").read_text() == before
    assert "| uniform |" in compare.format_table(res)


def test_compare_rejects_bad_methods_before_running(tmp_path):
    with pytest.raises(ValueError, match="sampler.bogus"):
        compare.compare(
            ["ddc:bogus=1"], out=tmp_path / "x", seeds=1, steps=5, overrides=TINY, log=lambda m: None
        )
    assert not (tmp_path / "x").exists()


def test_split_methods_keeps_parameters_with_their_method():
    assert compare.split_methods(
        "uniform,ddc:clustering=snr,patience=100,clts+mdlrc:beta1_end=0.6, min-snr"
    ) == ["uniform", "ddc:clustering=snr,patience=100", "clts+mdlrc:beta1_end=0.6", "min-snr"]


def test_speedup_is_not_a_number_from_one_evaluation():
    """One kept checkpoint per run used to print "1.00x" (clts FD 44.5 against uniform 53.6)."""
    assert compare.speedup([(200, 53.6)], [(200, 44.5)])["speedup"] == "one evaluation"
    assert compare.speedup([(100, 60.0), (200, 53.6)], [(200, 44.5)])["speedup"] == "one evaluation"
    assert compare.speedup([(200, 53.6)], [(100, 50.0), (200, 44.5)])["speedup"] == "one evaluation"
    assert compare.speedup([(100, 60.0), (200, 53.6)], [(100, 50.0), (200, 44.5)])["speedup"] > 1
    # nor is the mean over seeds: it said "not reached" for the baseline itself
    assert compare.mean_speedup(["one evaluation", "one evaluation"]) == "one evaluation"
    assert compare.mean_speedup([1.5, "one evaluation"]) == "one evaluation"
    assert compare.mean_speedup([1.5, "not reached"]) == "not reached"
    assert compare.mean_speedup(["no baseline", "one evaluation"]) == "no baseline"
    assert compare.mean_speedup([1.5, 2.5]) == 2.0 and compare.mean_speedup([]) is None


def test_empty_methods_is_refused_in_one_sentence(tmp_path, capsys):
    from diffusion_curriculum.cli import main

    with pytest.raises(ConfigError, match="names no method"):
        compare.split_methods(" , ")
    assert main(["compare", "--methods", "", "--out", str(tmp_path / "c")]) == 2
    assert "names no method" in capsys.readouterr().err


def test_steps_per_s_is_labelled_as_machine_throughput():
    """The steps/s column read as the method's cost (0.32 steps/s for clts on a shared core, issue 15)."""
    res = {
        "metric": "fd",
        "baseline": "uniform",
        "methods": {
            "clts": {
                "final_mean": 44.5,
                "final_std": 0.0,
                "speedup_mean": 1.2,
                "speedup_per_seed": [1.2],
                "reached": "1/1",
                "steps_per_s": 0.32,
            }
        },
    }
    table = compare.format_table(res)
    assert "| machine steps/s † |" in table.splitlines()[0]
    assert table.endswith(compare.THROUGHPUT_NOTE) and "not what the method costs" in compare.THROUGHPUT_NOTE


def test_one_value_per_step_the_first_logged():
    """A step evaluated twice (a run resumed after it finished, before that was refused) counts once, with its
    first value, and is reported."""
    from diffusion_curriculum.compare import quality_curve, repeated_steps

    recs = [
        {"step": 500, "fd": 9.0},
        {"step": 1000, "fd": 4.0},
        {"step": 1000, "fd": 6.0},
        {"step": 50, "loss": 1},
    ]
    assert quality_curve(recs, "fd") == [(500, 9.0), (1000, 4.0)]
    assert repeated_steps(recs, "fd") == [1000] and repeated_steps(recs[:2], "fd") == []


def test_one_seed_shows_no_spread():
    """`± 0` with one seed read as "no spread"; the table says "one seed" instead."""
    from diffusion_curriculum.compare import format_table

    def method(finals):
        per_seed = [{"final": f} for f in finals]
        std = 0.0 if len(finals) == 1 else 0.5
        return {
            "final_mean": sum(finals) / len(finals),
            "final_std": std,
            "speedup_mean": None,
            "speedup_per_seed": [],
            "reached": "0/0",
            "steps_per_s": None,
            "per_seed": per_seed,
        }

    table = format_table(
        {"metric": "fd", "baseline": "uniform", "methods": {"a": method([3.0]), "b": method([3.0, 4.0])}}
    )
    assert "| a | 3 (one seed) |" in table and "| b | 3.5 ± 0.5 |" in table


def _synthetic_runs(out, curves: dict, val_loss: dict | None = None, steps: int = 4000) -> None:
    """Run directories holding only what the summary reads: fd records (``curves[label][seed]``), an optional
    final ``val_loss`` record, and a summary of ``steps`` steps (finished)."""
    for lab, per_seed in curves.items():
        for s, curve in enumerate(per_seed):
            run = out / "runs" / compare.run_dir_name(lab) / f"seed{s}"
            run.mkdir(parents=True)
            recs = [{"step": k, "fd": v} for k, v in curve]
            if val_loss:
                recs.append({"step": curve[-1][0], "val_loss": val_loss[lab][s]})
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
            (run / "summary.json").write_text(json.dumps({"steps": steps}))


def _curve(scale: float, speed: float = 1.0) -> list:
    """FD falling as scale·8000/(speed·step) at steps 500..4000 (speed 2: at step k what speed 1 is at 2k)."""
    return [(k, scale * 8000 / (speed * k) + 2.0) for k in range(500, 4001, 500)]


def test_paired_tables_against_the_baseline_and_against_a_second_method(tmp_path):
    out = tmp_path / "c"
    curves = {
        "uniform": [_curve(1.0), _curve(1.1), _curve(0.9)],
        "fast": [_curve(1.0, 2.0), _curve(1.1, 1.9), _curve(0.9, 2.1)],
        "slow": [_curve(1.0, 0.5), _curve(1.1, 0.6), _curve(0.9, 0.4)],
    }
    val = {"uniform": [0.5, 0.6, 0.7], "fast": [0.4, 0.5, 0.6], "slow": [0.5, 0.6, 0.7]}
    _synthetic_runs(out, curves, val)
    res = compare.summarize(out, list(curves), 3, against="fast", log=lambda m: None)
    assert set(res["paired"]) == {"uniform", "fast"}
    assert set(res["paired"]["uniform"]) == {"fast", "slow"} and set(res["paired"]["fast"]) == {
        "uniform",
        "slow",
    }
    fast = res["paired"]["uniform"]["fast"]
    assert sorted(fast["ratios"]) == [0.25, 0.5, 0.75, 1.0]
    assert fast["ratios"][0.5]["verdict"] == "ahead" and fast["ratios"][0.5]["mean"] > 1.5
    assert fast["diffs"]["val_loss"]["per_seed"] == {s: pytest.approx(-0.1) for s in range(3)}
    assert res["paired"]["uniform"]["slow"]["ratios"][0.25]["verdict"] == "behind"
    assert res["paired"]["fast"]["slow"]["ratios"][1.0]["not_reached"] == [0, 1, 2]
    assert res["paired"]["fast"]["uniform"]["ratios"][0.25]["verdict"] == "behind"
    assert res["fd_noise"] is None  # no checkpoints: nothing to score again
    text = compare.format_report(res)
    assert "Paired against uniform:" in text and "Paired against fast:" in text
    assert "| steps ratio at 25 % (FD@1000) |" in text and "| final val_loss − uniform |" in text
    assert "n.r. (seeds 0, 1, 2 of 3) –" in text
    assert "FD noise: unknown (not measured: the baseline's runs have no checkpoint to score again)." in text
    saved = json.loads((out / "results.json").read_text())
    assert saved["paired"]["uniform"]["fast"]["ratios"]["0.5"]["verdict"] == "ahead"


def test_no_val_loss_column_without_val_loss_records(tmp_path):
    curves = {"uniform": [_curve(1.0)] * 3, "b": [_curve(1.0, 1.2)] * 3}
    _synthetic_runs(tmp_path, curves)
    res = compare.summarize(tmp_path, list(curves), 3, log=lambda m: None)
    assert set(res["paired"]["uniform"]["b"]["diffs"]) == {"fd"}
    assert "val_loss" not in compare.format_report(res)


def _uniform_vs_logit_normal(out) -> list[str]:
    """The compare command line of uniform against logit-normal, 3 seeds of 4000 steps, into ``out``."""
    return [
        "compare",
        "--methods",
        "uniform,logit-normal",
        "--seeds",
        "3",
        "--steps",
        "4000",
        "--out",
        str(out),
    ]


def test_cli_compare_against_prints_the_paired_tables(tmp_path, capsys):
    from diffusion_curriculum.cli import main

    out = tmp_path / "c"
    _synthetic_runs(
        out, {"uniform": [_curve(1.0), _curve(1.1), _curve(0.9)], "logit-normal": [_curve(1.0, 1.5)] * 3}
    )
    argv = _uniform_vs_logit_normal(out)
    assert main([*argv, "--summarize-only", "--against", "logit-normal", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "Paired against uniform:" in printed and "Paired against logit-normal:" in printed
    assert "| `logit-normal` | 0, 1, 2 |" in printed
    assert main([*argv, "--summarize-only", "--against", "uniform", *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "--against uniform is the baseline already" in err


def test_summarize_only_with_nothing_trained_is_one_sentence_and_a_missing_method_says_missing(
    tmp_path, capsys
):
    from diffusion_curriculum.cli import main

    out = tmp_path / "c"
    argv = _uniform_vs_logit_normal(out)
    assert main([*argv, "--summarize-only", *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "nothing to summarize" in err and "warning" not in err.lower()
    _synthetic_runs(out, {"uniform": [_curve(1.0), _curve(1.1), _curve(0.9)]})
    assert main([*argv, "--summarize-only", *TINY]) == 1
    printed = capsys.readouterr().out
    assert "| logit-normal | missing |" in printed and "failed" not in printed


def test_compare_says_each_line_in_one_write(monkeypatch):
    """Two threads speak at once (progress lines, runs starting): each line and its newline go out in one write,
    so lines cannot run together ("... done (748 s)assignment seed 0: started")."""
    import sys

    writes = []

    class Recorder:
        def write(self, s):
            writes.append(s)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", Recorder())
    compare.say_line("knn seed 0: done (748 s)")
    assert writes == ["knn seed 0: done (748 s)\n"]


def test_offline_records_of_a_run_without_checkpoints_are_its_committed_file(tmp_path):
    # a run rebuilt from committed result files has its eval-n<N>.jsonl and no checkpoints: compare's summary
    # reads the file instead of dropping the run
    records = [{"step": 500, "samples": 1000, "fd": 9.5}, {"step": 1000, "samples": 1000, "fd": 6.25}]
    (tmp_path / "eval-n1000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert compare._offline_records(tmp_path, 1000, say=lambda m: None) == records
    assert compare._offline_records(tmp_path, 500, say=lambda m: None) == []
