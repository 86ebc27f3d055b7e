"""The analysis tools: entropy (Kim et al. 2024), difficulty (same paper), consistency (Xu et al. 2024)."""

import copy
import json
import math

import numpy as np
import pytest
import torch

from conftest import TINY
from diffusion_curriculum import timesteps
from diffusion_curriculum.analysis import consistency, difficulty, entropy
from diffusion_curriculum.cli import main
from diffusion_curriculum.process import DiscreteProcess


def _gaussian_data(n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g) * torch.tensor([1.0, 0.5]) + torch.tensor([0.5, -1.0])


# -- entropy ----------------------------------------------------------------------------------------------
def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 3, generator=g) @ torch.randn(3, 3, generator=g) + 2.0
    fit = entropy.gaussian_fit(x)
    mu = torch.as_tensor(fit[0])
    xc = x.double() - mu
    cov = xc.T @ xc / len(x)
    for a2p, a2 in [(0.9, 0.8), (0.3, 0.2), (0.999, 0.998)]:
        p = torch.distributions.MultivariateNormal(math.sqrt(a2p) * mu, a2p * cov + (1 - a2p) * torch.eye(3))
        q = torch.distributions.MultivariateNormal(math.sqrt(a2) * mu, a2 * cov + (1 - a2) * torch.eye(3))
        ref = float(torch.distributions.kl_divergence(p, q))
        got = entropy.gaussian_kl(fit, a2p, 1 - a2p, a2, 1 - a2)
        assert got == pytest.approx(ref, rel=1e-6, abs=1e-12)
        assert got >= 0


@pytest.mark.parametrize("control_variate", [False, True])
def test_mc_kl_matches_closed_form_on_gaussian_data(control_variate):
    # the empirical mixture of many Gaussian points ≈ the Gaussian (and has exactly its first two moments)
    proc = DiscreteProcess.from_alphas_cumprod(torch.tensor([0.95, 0.8, 0.5, 0.2, 0.05], dtype=torch.float64))
    rows = entropy.entropy_table(
        proc, _gaussian_data(), stride=1, samples_per_t=1000, subsample=None, control_variate=control_variate
    )
    assert [r["t"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert r["kl_gaussian"] > 0
        assert abs(r["kl"] - r["kl_gaussian"]) <= 4 * r["kl_stderr"] + 0.05 * r["kl_gaussian"]


def test_mc_kl_nonnegative_within_noise_and_closed_form_nonnegative():
    proc = DiscreteProcess.linear(T=200)
    x = torch.rand(300, 4) * 2 - 1
    rows = entropy.entropy_table(proc, x, stride=23, samples_per_t=64, seed=3)
    for r in rows:
        assert r["kl"] >= -4 * r["kl_stderr"] - 1e-9
        assert r["kl_gaussian"] >= 0
    assert rows[0]["kl"] > rows[-1]["kl"]  # larger at small t (Kim et al.)


def test_entropy_edm_grid():
    from diffusion_curriculum.process import EDMProcess

    rows = entropy.entropy_table(EDMProcess(), _gaussian_data(500), stride=4, samples_per_t=32, sigmas=13)
    assert [r["t"] for r in rows] == [1, 5, 9]
    assert all(r["sigma_prev"] < r["sigma"] for r in rows)


# -- difficulty -------------------------------------------------------------------------------------------
def test_steps_to_fraction_known_crossings():
    # from 1.0 down to 0.0 linearly over steps 0..100, then flat at 0: drop 1
    curve = [(s, max(0.0, 1.0 - s / 100)) for s in range(0, 201, 10)]
    r = difficulty.steps_to_fraction(curve, final_window=3)
    assert r["initial"] == 1.0 and r["final"] == 0.0 and r["drop"] == 1.0
    assert r["steps_90"] == pytest.approx(90.0)
    assert r["steps_95"] == pytest.approx(95.0)  # interpolated between the points at 90 and 100
    assert r["steps_99"] == pytest.approx(99.0)
    # final = mean of the last 2 points (0.2, 0.0 → 0.1); level for 90 % = 1 − 0.9·0.9 = 0.19
    r = difficulty.steps_to_fraction([(0, 1.0), (10, 0.5), (20, 0.2), (30, 0.0)], final_window=2)
    assert r["final"] == pytest.approx(0.1)
    assert r["steps_90"] == pytest.approx(20 + (0.2 - 0.19) / 0.2 * 10)
    # no drop → None; never reached → None
    assert difficulty.steps_to_fraction([(0, 1.0), (10, 1.2)])["steps_90"] is None
    assert difficulty.steps_to_fraction([])["final"] is None


def test_interval_sampler_and_bounds():
    proc = DiscreteProcess.linear(T=100)
    s = timesteps.build("interval", proc, lo=20, hi=40)
    t = s.sample(1000, generator=torch.Generator().manual_seed(0)).t
    assert int(t.min()) >= 20 and int(t.max()) < 40 and len(set(t.tolist())) == 20
    with pytest.raises(ValueError, match="hi"):
        timesteps.build("interval", proc, lo=20, hi=20)
    assert difficulty.interval_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]


# -- consistency ------------------------------------------------------------------------------------------
class _Tiny(torch.nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x, t):
        return self.lin(torch.cat([x, t[:, None] / 50], 1))


def test_identical_models_ratio_zero_agreement_one():
    proc = DiscreteProcess.linear(T=50)
    a = _Tiny(0)
    b = copy.deepcopy(a)
    xa, xb = consistency.shared_noise_samples([a, b], proc, (2,), 16, prediction="eps", seed=5)
    d = consistency.distances(xa, xb)
    assert d["paired_distance"] == 0 and d["ratio"] == 0 and d["unpaired_distance"] > 0
    rows = consistency.eps_agreement(a, b, proc, _gaussian_data(32), [0, 25, 49], prediction="eps")
    for r in rows:
        assert r["cosine"] == pytest.approx(1.0) and r["rel_error"] == 0
    c = _Tiny(1)
    xc = consistency.shared_noise_samples([c], proc, (2,), 16, prediction="eps", seed=5)[0]
    assert consistency.distances(xa, xc)["ratio"] > 0


# -- the command line, end to end --------------------------------------------------------------------------
def _files(out, name):
    for ext in ("csv", "json", "png"):
        assert (out / f"{name}.{ext}").stat().st_size > 0
    return json.loads((out / f"{name}.json").read_text())


def test_cli_entropy(tmp_path, capsys):
    out = tmp_path / "e"
    rc = main(
        [
            "analyze",
            "entropy",
            "--out",
            str(out),
            "--stride",
            "250",
            "--samples-per-t",
            "16",
            "--subsample",
            "200",
        ]
    )
    assert rc == 0
    res = _files(out, "entropy")
    assert [r["t"] for r in res["rows"]] == [1, 251, 501, 751]
    assert "kl_gaussian" in capsys.readouterr().out


def test_cli_entropy_at_cheap_settings_says_so_and_plots_no_dips_for_negative_estimates(
    tmp_path, capsys, monkeypatch
):
    """Cheap settings give Monte Carlo KL estimates <= 0; they used to be drawn as dips to 1e-12 on the log
    axis with no word. Now they are left out of the line, marked at their +2 stderr bound, and noted."""
    from diffusion_curriculum import viz

    figures = []
    real_save = viz.save_figure
    monkeypatch.setattr(
        viz, "save_figure", lambda plt, fig, path: (figures.append(fig), real_save(plt, fig, path))
    )
    out = tmp_path / "e"
    argv = [
        "analyze",
        "entropy",
        "--out",
        str(out),
        "--stride",
        "50",
        "--samples-per-t",
        "16",
        "--subsample",
        "200",
    ]
    assert main(argv) == 0
    res = _files(out, "entropy")
    bad = [r for r in res["rows"] if r["kl"] <= 0]
    assert bad and res["note"].startswith(
        f"{len(bad)} of {len(res['rows'])} Monte Carlo KL estimates are <= 0"
    )
    assert f"note: {res['note']}" in capsys.readouterr().err
    (ax,) = figures[0].axes
    bottom = ax.get_ylim()[0]
    positive = [r["kl"] for r in res["rows"] if r["kl"] > 0]
    assert bottom >= min(positive) / 100  # no dip to a 1e-12 floor
    for line in ax.get_lines():
        y = np.asarray(line.get_ydata(), dtype=float)
        assert (y[np.isfinite(y)] >= bottom).all(), line.get_label()
    marked = [ln for ln in ax.get_lines() if ln.get_label().startswith("estimate <= 0")]
    assert len(marked) == 1 and len(marked[0].get_ydata()) == len(bad)


def test_cli_entropy_stride_zero_names_only_the_broken_rule(tmp_path, capsys):
    rc = main(["analyze", "entropy", "--out", str(tmp_path / "e"), "--stride", "0"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--stride 0 is invalid" in err and "samples-per-t" not in err


def test_cli_difficulty_per_bucket(tmp_path):
    out = tmp_path / "d"
    rc = main(
        [
            "analyze",
            "difficulty",
            "--mode",
            "per-bucket",
            "--intervals",
            "3",
            "--out",
            str(out),
            *TINY,
            "process.T=100",
        ]
    )
    assert rc == 0
    res = _files(out, "difficulty")
    assert [r["interval"] for r in res["rows"]] == ["bucket0", "bucket1", "bucket2"]
    assert all(len(res["curves"][k]) == 6 for k in res["curves"])  # 30 steps, logged every 5
    assert "steps_90" in res["rows"][0]


def test_cli_difficulty_per_interval_and_consistency(tmp_path, capsys):
    out = tmp_path / "d"
    tiny = [*TINY, "process.T=20", "steps=10", "checkpoint_every=0", "log_every=2"]
    rc = main(["analyze", "difficulty", "--intervals", "2", "--jobs", "1", "--out", str(out), *tiny])
    assert rc == 0
    res = _files(out, "difficulty")
    assert [(r["t_lo"], r["t_hi"]) for r in res["rows"]] == [(0, 10), (10, 20)]
    assert all("error" not in r for r in res["rows"])
    assert all(len(res["curves"][k]) == 5 for k in res["curves"])

    out = tmp_path / "c"
    rc = main(
        [
            "analyze",
            "consistency",
            "--jobs",
            "1",
            "--n",
            "4",
            "--n-real",
            "8",
            "--t-points",
            "3",
            "--out",
            str(out),
            *tiny,
        ]
    )
    assert rc == 0
    res = _files(out, "consistency")
    assert [r["t"] for r in res["rows"]] == [0, 10, 19]
    assert 0 < res["ratio"] and res["steps"] == [10, 10]
    # loading the same run twice: identical models
    a = str(out / "model_a")
    rc = main(
        [
            "analyze",
            "consistency",
            "--checkpoints",
            a,
            a,
            "--n",
            "4",
            "--n-real",
            "8",
            "--t-points",
            "2",
            "--out",
            str(tmp_path / "same"),
        ]
    )
    assert rc == 0
    res = _files(tmp_path / "same", "consistency")
    assert res["ratio"] == 0 and all(r["cosine"] == pytest.approx(1.0) for r in res["rows"])
    assert "ratio 0" in capsys.readouterr().out


def test_cli_analyze_bad_option(tmp_path, capsys):
    assert main(["analyze", "difficulty", "--intervals", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--intervals" in capsys.readouterr().err
