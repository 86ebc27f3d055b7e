"""DDC (Kim et al. 2024, arXiv 2403.10348): clusterings, stages, pacing, the joint phase, state and errors."""

import itertools
import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import norm

from diffusion_curriculum import timesteps
from diffusion_curriculum.process import DiscreteProcess, EDMProcess
from diffusion_curriculum.timesteps import clusters as C


@pytest.fixture(autouse=True)
def _immediate(immediate_observations):
    """Observations applied at once: these tests check what the sampler decides, not when it reads."""


LIN = DiscreteProcess.linear(1000)
COS = DiscreteProcess.cosine(1000)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def assert_partition(cl, T, N):
    assert len(cl) == N
    assert cl[0][0] == 0 and cl[-1][1] == T
    for (_, b), (c, _) in zip(cl[:-1], cl[1:]):
        assert b == c
    assert all(isinstance(lo, int) and isinstance(hi, int) and lo < hi for lo, hi in cl)


def run(sampler, losses, B=4, seed=0):
    """Feed a loss stream; return the stage (or 'joint') in force after each observe."""
    g = gen(seed)
    out = []
    for x in losses:
        d = sampler.sample(B, generator=g)
        sampler.observe(d.t, torch.full((B,), float(x)))
        st = sampler.status()
        out.append("joint" if st["phase"] == "joint" else st["stage"])
    return out


# -- clusterings -----------------------------------------------------------------------------------------
def test_uniform_clusters():
    cl = C.uniform(1000, 20)
    assert_partition(cl, 1000, 20)
    assert cl[0] == (0, 50) and cl[-1] == (950, 1000) and cl[-3] == (850, 900)
    assert_partition(C.uniform(10, 3), 10, 3)
    assert C.uniform(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert C.uniform(5, 5) == [(i, i + 1) for i in range(5)]


def brute_force_best(s, N):
    """The least Σ |SNR(t) − SNR(middle)| over every partition of [0, T) into N contiguous intervals."""
    T = len(s)
    best = math.inf
    for cuts in itertools.combinations(range(1, T), N - 1):
        b = (0, *cuts, T)
        total = 0.0
        for lo, hi in zip(b[:-1], b[1:]):
            mid = lo + (hi - lo - 1) // 2
            total += sum(abs(s[t] - s[mid]) for t in range(lo, hi))
        best = min(best, total)
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("T,N", [(10, 3), (9, 4), (7, 1), (6, 6)])
def test_snr_dp_is_optimal_against_brute_force(seed, T, N):
    rng = np.random.default_rng(seed)
    # a random strictly decreasing ᾱ table, and the linear schedule
    ac = np.sort(rng.uniform(0.001, 0.999, T))[::-1].copy()
    for p in (DiscreteProcess(torch.tensor(ac)), DiscreteProcess.linear(T, 1e-3, 0.3)):
        a = p.alphas_cumprod.numpy()
        s = a / (1 - a)
        cl = C.snr(p, N)
        assert_partition(cl, T, N)
        assert C.partition_cost(s, cl) == pytest.approx(brute_force_best(list(s), N), rel=1e-12, abs=1e-12)


def test_interval_costs_match_direct_sums():
    a = LIN.alphas_cumprod.numpy()[:40]
    s = a / (1 - a)
    cost = C.interval_costs(s)
    for lo, hi in [(0, 1), (0, 40), (3, 17), (5, 6), (10, 12), (20, 39)]:
        assert cost[lo, hi] == pytest.approx(C.partition_cost(s, [(lo, hi)]), rel=1e-12, abs=1e-9)
    assert np.isinf(cost[5, 5]) and np.isinf(cost[7, 3])


def test_snr_dp_linear_and_cosine_are_skewed_and_cached():
    # docs/methods.md, "DDC": linear β, T=1000, N=5 — the DP's last boundary is about 18; the noisiest cluster is
    # nearly the whole range. Observed: boundaries [1, 2, 5, 18], C_5 = [18, 1000).
    cl5 = C.snr(LIN, 5)
    assert_partition(cl5, 1000, 5)
    assert [lo for lo, _ in cl5[1:]] == [1, 2, 5, 18]
    assert cl5[-1][1] - cl5[-1][0] > 0.9 * 1000
    cl20 = C.snr(LIN, 20)  # T=1000, N=20 runs once here (well under a second), then comes from the cache
    assert_partition(cl20, 1000, 20)
    assert cl20[-1] == (263, 1000)
    assert C.snr(LIN, 20) == cl20 and C.snr(DiscreteProcess.linear(1000), 20) == cl20
    cc = C.snr(COS, 20)
    assert_partition(cc, 1000, 20)
    assert cc[-1] == (359, 1000)
    # the DP is no worse than the uniform split under its own objective
    a = LIN.alphas_cumprod.numpy()
    s = a / (1 - a)
    assert C.partition_cost(s, cl20) <= C.partition_cost(s, C.uniform(1000, 20))


def test_log_snr_clusters_have_equal_widths():
    for p, N in [(LIN, 20), (LIN, 5), (COS, 8)]:
        cl = C.log_snr(p, N)
        assert_partition(cl, 1000, N)
        a = p.alphas_cumprod.numpy()
        lam = np.log(a / (1 - a))
        width = (lam[0] - lam[-1]) / N
        # each interior boundary sits where log-SNR crosses its equal-width edge
        for k, (lo, _) in enumerate(cl[1:], start=1):
            edge = lam[0] - k * width
            assert lam[lo - 1] > edge >= lam[lo]
    # linear, N=20: nothing degenerate; observed boundaries
    assert [lo for lo, _ in C.log_snr(LIN, 5)[1:]] == [17, 139, 493, 785]


def test_log_snr_degenerate_cases_still_give_n_nonempty_clusters():
    # cosine's clipped last β makes log-SNR plunge at t = 999: the noisiest edges fall on the last steps
    cl = C.log_snr(COS, 20)
    assert_partition(cl, 1000, 20)
    assert [lo for lo, _ in cl[-7:]] == [993, 994, 995, 996, 997, 998, 999]
    assert_partition(C.log_snr(LIN, 1000), 1000, 1000)
    const = DiscreteProcess(torch.full((6,), 0.5))
    assert C.log_snr(const, 3) == C.uniform(6, 3)


def test_quantile_clusters_carry_equal_mass():
    p = EDMProcess(P_mean=-1.2, P_std=1.2)
    cl = C.quantile(p, 10)
    assert len(cl) == 10 and cl[0][0] == -math.inf and cl[-1][1] == math.inf
    for (a, b), (c, _) in zip(cl[:-1], cl[1:]):
        assert b == c and a < b
    mass = [norm.cdf(b, -1.2, 1.2) - norm.cdf(a, -1.2, 1.2) for a, b in cl]
    assert mass == pytest.approx([0.1] * 10, abs=1e-12)
    # and by draws from the process's training log-normal
    ls = (-1.2 + 1.2 * torch.randn(100_000, generator=gen())).double().numpy()
    edges = [b for _, b in cl[:-1]]
    counts = np.bincount(np.searchsorted(edges, ls), minlength=10) / ls.size
    assert counts == pytest.approx([0.1] * 10, abs=0.005)


def test_cluster_build_errors():
    with pytest.raises(ValueError, match=r"clustering='foo'.*allowed: uniform, snr, log-snr, quantile"):
        C.build("foo", LIN, 5)
    with pytest.raises(ValueError, match=r"clustering='log_snr'.*did you mean 'log-snr'"):
        C.build("log_snr", LIN, 5)
    with pytest.raises(ValueError, match="clustering='quantile' needs an EDM"):
        C.build("quantile", LIN, 5)
    for kind in ("snr", "uniform", "log-snr"):
        with pytest.raises(ValueError, match=f"clustering='{kind}' needs a discrete process"):
            C.build(kind, EDMProcess(), 5)
    for kind in ("snr", "uniform", "log-snr"):
        with pytest.raises(ValueError, match="clusters=11"):
            C.build(kind, DiscreteProcess.linear(10), 11)
        with pytest.raises(ValueError, match="clusters=0"):
            C.build(kind, DiscreteProcess.linear(10), 0)
    with pytest.raises(ValueError, match="clusters=0"):
        C.build("quantile", EDMProcess(), 0)


# -- stages and draws ------------------------------------------------------------------------------------
def test_default_stages_draw_inside_the_cumulative_union():
    s = timesteps.build("ddc", LIN, total_steps=1000)  # N = 20 uniform, τ = 200
    assert s.intervals[-1] == (950, 1000) and s.status() == {
        "phase": "curriculum",
        "stage": 1,
        "stages": 20,
        "stage_steps": 0,
        "converged": 0,
        "capped": 0,
    }
    d = s.sample(5000, generator=gen())
    assert d.t.dtype == torch.long and d.t.min() >= 950 and d.t.max() == 999
    assert torch.equal(d.weight, torch.ones(5000))
    s.stage = 3
    assert s.stage_range() == (850, 1000)
    t = s.sample(5000, generator=gen()).t
    assert t.min() == 850 and t.max() == 999
    # uniform over the union: exactly one randint over [850, 1000)
    assert torch.equal(t, torch.randint(850, 1000, (5000,), generator=gen()))


def test_anti_order():
    s = timesteps.build("ddc", LIN, clusters=20, order="anti")
    assert s.stage_range() == (0, 50)
    t = s.sample(2000, generator=gen()).t
    assert t.min() == 0 and t.max() == 49
    s.stage = 4
    assert s.stage_range() == (0, 200)
    t = s.sample(2000, generator=gen()).t
    assert t.min() == 0 and t.max() == 199


def test_snr_clustering_stage_one_is_nearly_everything():
    s = timesteps.build("ddc", LIN, clusters=5, clustering="snr")
    assert s.stage_range() == (18, 1000)


def test_per_cluster_share_equal_counts():
    s = timesteps.build("ddc", LIN, clusters=10, per_cluster_share=True)
    s.stage = 4  # clusters 7 … 10: [600, 1000)
    t = s.sample(400, generator=gen()).t
    assert t.min() >= 600
    counts = torch.bincount((t - 600) // 100, minlength=4)
    assert counts.tolist() == [100, 100, 100, 100]
    # the batch is shuffled, not laid out cluster by cluster
    assert not torch.equal(t.sort().values, t)
    # with a remainder: counts differ by at most one, and the extras rotate so k steps even out
    total = torch.zeros(4, dtype=torch.long)
    for _ in range(4):
        t = s.sample(10, generator=gen(1)).t
        c = torch.bincount((t - 600) // 100, minlength=4)
        assert c.max() - c.min() <= 1 and c.sum() == 10
        total += c
        s.observe(t, torch.ones(10))
    assert total.tolist() == [10, 10, 10, 10]
    # EDM too
    e = timesteps.build("ddc", EDMProcess(), clusters=5, per_cluster_share=True)
    e.stage = 5
    ls = e.sample(500, generator=gen()).t.double().log().numpy()
    edges = [b for _, b in e.intervals[:-1]]
    assert np.bincount(np.searchsorted(edges, ls), minlength=5).tolist() == [100] * 5


def test_edm_stages_draw_inside_the_union():
    p = EDMProcess(P_mean=-1.2, P_std=1.2)
    s = timesteps.build("ddc", p, clusters=4)
    assert s.clustering == "quantile"
    for stage in (1, 2, 3):
        s.stage = stage
        lo, hi = s.stage_range()
        assert hi == math.inf and lo == pytest.approx(norm.ppf((4 - stage) / 4, -1.2, 1.2))
        d = s.sample(20_000, generator=gen(stage))
        assert d.t.is_floating_point() and (d.t > 0).all()
        ls = d.t.double().log()
        assert ls.min() >= lo - 1e-5
        # truncated log-normal: the median sits at the middle quantile of the union's mass
        assert norm.cdf(ls.median().item(), -1.2, 1.2) == pytest.approx(1 - stage / 8, abs=0.01)
    s.order = "anti"
    s.stage = 1
    ls = s.sample(5000, generator=gen()).t.double().log()
    assert ls.max() <= s.stage_range()[1] + 1e-5


# -- pacing ----------------------------------------------------------------------------------------------
def test_flat_loss_advances_after_patience():
    s = timesteps.build("ddc", LIN, clusters=4, pacing="patience", patience=5)
    stages = run(s, [1.0] * 30)
    # the first step of a stage sets the best; τ = 5 non-improving steps later the stage changes
    assert stages[:6] == [1] * 5 + [2]
    assert stages[6:12] == [2] * 5 + [3]
    assert stages[12:24] == [3] * 5 + [4] * 6 + ["joint"]  # stage N = 4 also lasts τ + 1 steps
    assert s.status() == {"phase": "joint", "stage": 4, "stages": 4, "ended": "patience"}


def test_improving_loss_holds_the_stage_and_min_delta():
    s = timesteps.build("ddc", LIN, clusters=4, pacing="patience", patience=3)
    assert run(s, [1.0 / (i + 1) for i in range(50)]) == [1] * 50
    # improvements smaller than min_delta do not count
    s = timesteps.build("ddc", LIN, clusters=4, pacing="patience", patience=3, min_delta=0.01)
    stages = run(s, [1.0 - 0.001 * i for i in range(10)])
    assert stages[:4] == [1, 1, 1, 2]
    s = timesteps.build("ddc", LIN, clusters=4, pacing="patience", patience=3, min_delta=0.01)
    assert run(s, [1.0 - 0.02 * i for i in range(10)]) == [1] * 10


def test_wait_counter_resets_on_improvement():
    s = timesteps.build("ddc", LIN, clusters=4, pacing="patience", patience=3)
    stages = run(s, [1.0, 1.0, 1.0, 0.5, 0.6, 0.6, 0.6])
    assert stages == [1, 1, 1, 1, 1, 1, 2]


def test_loss_ema_smooths_the_watched_loss():
    # alternating loss: raw it improves on the best only at the start; smoothed it keeps falling for a while
    losses = [1.0, 0.0] * 10
    raw = run(timesteps.build("ddc", LIN, clusters=4, pacing="patience", patience=3), losses)
    assert raw[:5] == [1, 1, 1, 1, 2]  # 1.0, 0.0 (improves), then 1.0, 0.0, 1.0 do not
    s = timesteps.build("ddc", LIN, clusters=4, pacing="patience", patience=3, loss_ema=0.5)
    run(s, [1.0, 0.0])
    assert s.ema == 0.5 and s.best == 0.5 and s.wait == 0


def test_max_steps_per_stage_forces_advance():
    s = timesteps.build("ddc", LIN, clusters=3, pacing="patience", patience=100, max_steps_per_stage=4)
    assert run(s, [1.0 / (i + 1) for i in range(13)]) == [1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, "joint", "joint"]


def test_fixed_pacing():
    s = timesteps.build("ddc", LIN, clusters=3, pacing="fixed", steps_per_stage=5)
    stages = run(s, [1.0 / (i + 1) for i in range(16)])  # improving loss is ignored
    assert stages == [1] * 4 + [2] * 5 + [3] * 5 + ["joint"] * 2


def test_joint_phase_is_plain_randint_over_everything():
    s = timesteps.build("ddc", LIN, clusters=2, pacing="fixed", steps_per_stage=1)
    run(s, [1.0, 1.0])
    assert s.phase == "joint" and s.stage_range() == (0, 1000)
    for seed in range(3):
        d = s.sample(257, generator=gen(seed))
        assert torch.equal(d.t, torch.randint(0, 1000, (257,), generator=gen(seed)))
    torch.manual_seed(5)
    a = s.sample(64).t
    torch.manual_seed(5)
    assert torch.equal(a, torch.randint(0, 1000, (64,)))
    # EDM: the full log-normal, exactly the lognormal sampler's draw
    p = EDMProcess()
    e = timesteps.build("ddc", p, clusters=2, pacing="fixed", steps_per_stage=1)
    run(e, [1.0, 1.0])
    ref = timesteps.build("lognormal", p).sample(100, generator=gen(3)).t
    assert torch.equal(e.sample(100, generator=gen(3)).t, ref)


# -- state -----------------------------------------------------------------------------------------------
PLAIN = (int, float, str, bool, type(None))


@pytest.mark.parametrize("process,kw", [(LIN, {}), (EDMProcess(), {}), (LIN, {"per_cluster_share": True})])
def test_state_roundtrip_mid_curriculum(process, kw):
    kw = dict(clusters=5, pacing="patience", patience=3, loss_ema=0.3, **kw)
    a = timesteps.build("ddc", process, **kw)
    g = gen(7)
    rng = np.random.default_rng(0)
    losses = rng.uniform(0.5, 1.0, 200)
    for x in losses[:9]:
        d = a.sample(6, generator=g)
        a.observe(d.t, torch.full((6,), x))
    state = a.state_dict()
    joint = state.pop("joint")
    for pending in (
        state.pop("observations"),
        joint.pop("observations", {}),
    ):  # applied at once: none pending
        assert all(v == [] for v in pending.values())
    assert all(isinstance(k, str) and isinstance(v, PLAIN) for k, v in joint.items())
    assert all(isinstance(v, PLAIN) for v in state.pop("window_losses"))
    assert all(isinstance(k, str) and isinstance(v, PLAIN) for k, v in state.items())
    state = a.state_dict()
    assert a.status()["phase"] == "curriculum" and a.stage > 1
    json.loads(json.dumps(state))  # best may be +inf: JSON in Python holds it
    b = timesteps.build("ddc", process, **kw)
    b.load_state_dict(json.loads(json.dumps(state)))
    assert b.status() == a.status() and b.step == a.step
    ga, gb = gen(), gen()
    ga.set_state(g.get_state())
    gb.set_state(g.get_state())
    for x in losses[9:59]:
        da, db = a.sample(6, generator=ga), b.sample(6, generator=gb)
        assert torch.equal(da.t, db.t)
        a.observe(da.t, torch.full((6,), x))
        b.observe(db.t, torch.full((6,), x))
        assert a.status() == b.status()
    assert a.status()["phase"] == "joint"  # the 50 steps crossed stage changes into the joint phase


def test_state_from_other_settings_is_refused():
    st = timesteps.build("ddc", LIN, clusters=5).state_dict()
    with pytest.raises(ValueError, match="stages=5"):
        timesteps.build("ddc", LIN, clusters=6).load_state_dict(st)


# -- parameters ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw,match",
    [
        ({"clusters": 0}, "clusters=0"),
        ({"clusters": 1001}, "clusters=1001.*T=1000"),
        ({"clusters": 2.5}, "clusters=2.5"),
        ({"pacing": "patience", "patience": -1}, "patience=-1"),
        ({"pacing": "patience", "patience": 0}, "patience=0"),
        ({"clustering": "foo"}, "clustering='foo'.*allowed: uniform, snr, log-snr, quantile"),
        ({"clustering": "snrr"}, "clustering='snrr'.*did you mean 'snr'"),
        ({"clustering": "quantile"}, "clustering='quantile'"),
        ({"pacing": "fixed"}, "steps_per_stage=None.*required with pacing='fixed'"),
        ({"pacing": "fixd", "steps_per_stage": 3}, "pacing='fixd'.*did you mean 'fixed'"),
        ({"steps_per_stage": 3}, "steps_per_stage=3"),
        ({"pacing": "fixed", "steps_per_stage": 0}, "steps_per_stage=0"),
        ({"order": "x"}, "order='x'.*allowed: easy-to-hard, anti"),
        ({"pacing": "patience", "min_delta": -1}, "min_delta=-1"),
        ({"pacing": "patience", "loss_ema": 1.0}, "loss_ema=1.0"),
        ({"pacing": "patience", "loss_ema": -0.1}, "loss_ema=-0.1"),
        ({"patience": 20}, "patience=20 belongs to pacing='patience', but pacing='adaptive'"),
        ({"loss_ema": 0.5}, "loss_ema=0.5 belongs to pacing='patience'"),
        ({"pacing": "patience", "window": 10}, "window=10 belongs to pacing='adaptive'"),
        (
            {"pacing": "fixed", "steps_per_stage": 3, "rel_tol": 0.1},
            "rel_tol=0.1 belongs to pacing='adaptive'",
        ),
        ({"curriculum_fraction": 0}, "curriculum_fraction=0"),
        ({"curriculum_fraction": 1.5}, "curriculum_fraction=1.5"),
        ({"window": 0}, "window=0"),
        ({"rel_tol": -0.1}, "rel_tol=-0.1"),
        ({"rel_tol": 1}, "rel_tol=1"),
        ({"joint": "unifrom"}, "joint='unifrom' is not a registered sampler.*did you mean 'uniform'"),
        ({"joint": "ddc"}, "joint='ddc'"),
        ({"joint": 3}, "joint=3"),
        ({"joint": {"name": "speed", "kk": 2}}, "joint: .*kk"),
        ({"max_steps_per_stage": 0}, "max_steps_per_stage=0"),
        ({"per_cluster_share": 1}, "per_cluster_share=1"),
        ({"total_steps": 0}, "total_steps=0"),
    ],
)
def test_bad_parameters_raise_naming_them(kw, match):
    with pytest.raises(ValueError, match=match):
        timesteps.build("ddc", LIN, **kw)


def test_edm_rejects_discrete_clusterings():
    with pytest.raises(ValueError, match="clustering='snr' needs a discrete process"):
        timesteps.build("ddc", EDMProcess(), clustering="snr")
    assert "ddc" in timesteps.names()


def test_warns_when_the_curriculum_needs_half_the_budget():
    """N·(τ+1) ≥ total/2 (the digits failure: τ=200, N=20, 4000 steps) warns and names the knobs; a budget that
    leaves room, an unknown budget, or a stage cap that shortens the curriculum does not."""
    p = DiscreteProcess.linear(1000)
    with pytest.warns(
        UserWarning, match=r"20 curriculum stages need at least 4020 of the 4000 planned steps"
    ):
        s = timesteps.build("ddc", p, total_steps=4000, pacing="patience")
    assert s.min_curriculum_steps() == 20 * 201
    with pytest.warns(UserWarning, match="lower steps_per_stage"):
        timesteps.build("ddc", p, total_steps=1000, pacing="fixed", steps_per_stage=25)  # 500 = half
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        timesteps.build("ddc", p, total_steps=4000, pacing="patience", patience=20)  # 420 steps
        timesteps.build("ddc", p)  # budget unknown
        s = timesteps.build("ddc", p, total_steps=4000, pacing="patience", max_steps_per_stage=50)
        assert s.min_curriculum_steps() == 1000
        timesteps.build("ddc", p, total_steps=1000, pacing="fixed", steps_per_stage=24)  # 480 < 500


def test_shipped_ddc_presets_fit_their_budget():
    """Every shipped preset that trains with DDC leaves room for joint training: the trainer's own builder
    (which passes ``steps`` as the sampler's budget) raises no budget warning."""
    from diffusion_curriculum import config
    from diffusion_curriculum.train import build_components

    found = 0
    for name in config.preset_names():
        cfg = config.resolve(name)
        if cfg["sampler"]["name"] != "ddc":
            continue
        found += 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            s = build_components(cfg).sampler
        assert 2 * s.min_curriculum_steps() < cfg["steps"], name
    assert found >= 1


# -- adaptive pacing: converged or τ_max -----------------------------------------------------------------
def feed(sampler, losses):
    """Observe a loss stream (a flat batch per step); return each stage's (length, how it ended)."""
    ends, last = [], 0
    for x in losses:
        sampler.observe(torch.zeros(2, dtype=torch.long), torch.full((2,), float(x)))
        st = sampler.status()
        if sampler.converged_stages + sampler.capped_stages > len(ends):
            ends.append((sampler.step - last, st["ended"]))
            last = sampler.step
        if st["phase"] == "joint":
            break
    return ends


@pytest.mark.parametrize(
    "total,kw,cap,window",
    [
        (4000, {}, 50, 12),
        (500, {}, 6, 5),
        (100_000, {}, 1250, 200),
        (400_000, {}, 5000, 200),
        (None, {}, 2000, 200),
        (4000, {"curriculum_fraction": 0.5}, 100, 25),
        (4000, {"clusters": 5}, 200, 50),
        (4000, {"max_steps_per_stage": 30, "window": 3}, 30, 3),
    ],
)
def test_tau_max_and_window_from_the_budget(total, kw, cap, window):
    s = timesteps.build("ddc", LIN, total_steps=total, **kw)
    assert (s.max_steps_per_stage, s.window) == (cap, window)
    assert s.max_curriculum_steps() == s.n_clusters * cap


def test_default_never_warns_from_500_steps_on():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for total in (500, 501, 777, 1000, 4000, 10_007, 100_000, 400_000, 10**7):
            s = timesteps.build("ddc", LIN, total_steps=total)
            assert s.max_curriculum_steps() <= 0.25 * total
    with pytest.warns(UserWarning, match="20 of the 30 planned steps.*lower clusters, max_steps_per_stage"):
        timesteps.build("ddc", LIN, total_steps=30)  # τ_max = 1: 20 stages need 20 steps


def test_flat_noisy_loss_converges_after_two_windows():
    rng = np.random.default_rng(0)
    s = timesteps.build("ddc", LIN, total_steps=100_000, clusters=4)  # τ_max 6250, W 200
    ends = feed(s, 1.0 + 0.1 * rng.standard_normal(20_000))
    assert [why for _, why in ends] == ["converged"] * 4
    assert all(n % 200 == 0 and 400 <= n <= 1000 for n, _ in ends), ends


def test_converging_loss_moves_on_soon_after_its_plateau():
    rng = np.random.default_rng(1)
    s = timesteps.build("ddc", LIN, total_steps=100_000, clusters=2)
    ends, last = [], 0
    while s.phase != "joint":
        # each stage: a fast exponential fall (time constant 300 steps) onto a plateau, noisy
        x = (0.2 + np.exp(-s.stage_steps / 300.0)) * (1 + 0.05 * rng.standard_normal())
        stage = s.stage
        s.observe(torch.zeros(2, dtype=torch.long), torch.full((2,), float(x)))
        if s.stage != stage or s.phase == "joint":
            ends.append((s.step - last, s.status()["ended"]))
            last = s.step
    assert [why for _, why in ends] == ["converged", "converged"]
    # not while it still falls by ≥ 1 % per window (until ~5 time constants), long before τ_max = 25 000
    assert all(1000 <= n <= 3000 for n, _ in ends), ends


def test_slowly_but_steadily_improving_loss_no_longer_stalls():
    """The patience rule's failure: a loss that inches down makes a new best every step and held stage 1 of 20
    for 50 000 steps. Adaptive pacing calls an improvement under 1 % per window converged, and the cap ends a
    stage whose loss improves faster than that for good."""
    slow = 1.0 * np.exp(-np.arange(50_000) / 1e5)  # 0.2 % per 200-step window
    s = timesteps.build("ddc", LIN, total_steps=100_000)
    ends = feed(s, slow)
    assert s.phase == "joint" and [w for _, w in ends] == ["converged"] * 20
    p = timesteps.build("ddc", LIN, total_steps=100_000, pacing="patience")
    feed(p, slow)
    assert p.stage == 1 and p.phase == "curriculum" and p.step == 50_000
    # 3 % per window: never converged, so every stage ends at τ_max = 1250
    steady = np.exp(-np.arange(30_000) * (0.03 / 200))
    s = timesteps.build("ddc", LIN, total_steps=100_000)
    ends = feed(s, steady)
    assert ends == [(1250, "cap")] * 20 and s.step == 25_000
    assert s.status() == {
        "phase": "joint",
        "stage": 20,
        "stages": 20,
        "ended": "cap",
        "converged": 0,
        "capped": 20,
    }


def test_spikes_neither_end_nor_hold_a_stage():
    rng = np.random.default_rng(2)
    spikes = np.where(rng.uniform(size=30_000) < 0.05, 20.0, 1.0)  # 5 % of batches 20× the loss
    s = timesteps.build("ddc", LIN, total_steps=100_000, clusters=3)
    assert [w for _, w in feed(s, spikes * (1 + 0.05 * rng.standard_normal(30_000)))] == ["converged"] * 3
    improving = np.exp(-np.arange(30_000) * (0.05 / 200)) * spikes
    s = timesteps.build("ddc", LIN, total_steps=100_000, clusters=3)
    assert feed(s, improving) == [(s.max_steps_per_stage, "cap")] * 3


def test_adaptive_state_round_trip_mid_window_gives_the_same_decisions():
    rng = np.random.default_rng(3)
    losses = 1.0 + 0.2 * rng.standard_normal(400)
    a = timesteps.build("ddc", LIN, total_steps=2000, clusters=5, window=7)  # τ_max 100
    feed(a, losses[:45])
    assert a.window_losses and a.stage_steps % 7 != 0
    b = timesteps.build("ddc", LIN, total_steps=2000, clusters=5, window=7)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for x in losses[45:]:
        for s in (a, b):
            s.observe(torch.zeros(2, dtype=torch.long), torch.full((2,), float(x)))
        assert a.status() == b.status() and a.state_dict() == b.state_dict()
    with pytest.raises(ValueError, match="pacing='adaptive' but this sampler has pacing='patience'"):
        timesteps.build("ddc", LIN, clusters=5, pacing="patience").load_state_dict(a.state_dict())


def test_state_written_before_adaptive_pacing_still_loads():
    old = {
        "name": "ddc",
        "step": 12,
        "phase": "curriculum",
        "stage": 3,
        "stages": 20,
        "clustering": "uniform",
        "order": "easy-to-hard",
        "best": 0.5,
        "wait": 2,
        "stage_steps": 4,
        "ema": 0.0,
    }
    s = timesteps.build("ddc", LIN, pacing="patience")
    s.load_state_dict(old)
    assert (s.stage, s.wait, s.stage_steps, s.step) == (3, 2, 4, 12)


# -- the joint phase's sampler ---------------------------------------------------------------------------
def _to_joint(s, B=8):
    g = gen(4)
    while s.phase != "joint":
        d = s.sample(B, generator=g)
        s.observe(d.t, torch.ones(B))
    return g


def test_joint_sampler_takes_over_after_the_curriculum():
    s = timesteps.build(
        "ddc", LIN, clusters=2, pacing="fixed", steps_per_stage=1, joint={"name": "speed", "k": 5}
    )
    _to_joint(s)
    ref = timesteps.build("speed", LIN, k=5)
    for seed in range(3):
        d, r = s.sample(64, generator=gen(seed)), ref.sample(64, generator=gen(seed))
        assert torch.equal(d.t, r.t) and torch.equal(d.weight, r.weight)
    assert not torch.equal(d.weight, torch.ones(64))  # SpeeD's change-aware weights come through
    assert s.status()["phase"] == "joint" and repr(s).count("joint='speed'") == 1


def test_joint_loss_second_moment_is_observed_only_in_the_joint_phase_and_round_trips():
    from diffusion_curriculum import checkpoint

    P = DiscreteProcess.linear(20)
    kw = dict(
        clusters=2, pacing="fixed", steps_per_stage=3, joint={"name": "loss-second-moment", "history": 2}
    )
    a = timesteps.build("ddc", P, **kw)
    g = _to_joint(a)
    assert a.joint.step == 0  # the curriculum's steps were not shown to it
    rng = np.random.default_rng(0)
    for _ in range(30):
        d = a.sample(16, generator=g)
        a.observe(d.t, torch.tensor(rng.uniform(0.1, 2.0, 16), dtype=torch.float32) * (d.t + 1))
    assert a.joint.step == 30 and a.status()["joint_warm"] is True
    assert not torch.allclose(a.sample(16, generator=gen()).weight, torch.ones(16))  # importance weights
    # through the checkpoint's own flattening (tensors inside the nested joint state)
    tensors: dict = {}
    flat = checkpoint.flatten(a.state_dict(), tensors, "sampler")
    b = timesteps.build("ddc", P, **kw)
    b.load_state_dict(checkpoint.unflatten(json.loads(json.dumps(flat)), tensors))
    for seed in range(5):
        da, db = a.sample(16, generator=gen(seed)), b.sample(16, generator=gen(seed))
        assert torch.equal(da.t, db.t) and torch.equal(da.weight, db.weight)
        loss = torch.rand(16, generator=gen(seed + 10))
        a.observe(da.t, loss)
        b.observe(db.t, loss)
