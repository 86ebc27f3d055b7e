"""MomentumDecay (MDLRC): β1/lr trajectories, composition with LR schedulers, real optimizer steps, state."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import TINY
from diffusion_curriculum import config, optim
from diffusion_curriculum.train import LRSchedule, Trainer

LR = 1e-3


def expected_beta1(s, b0, b1, s0, s1, shape):
    x = min(1.0, max(0.0, (s - s0) / (s1 - s0)))
    if shape == "cosine":
        x = 0.5 - 0.5 * math.cos(math.pi * x)
    return b0 + (b1 - b0) * x


def expected_c(beta, b0, comp):
    if comp == "none":
        return 1.0
    if (
        comp == "noise"
    ):  # std of Adam's first moment under white noise, √((1−β)/(1+β)), held at its β1_start value
        return math.sqrt((1 - b0) / (1 + b0)) / math.sqrt((1 - beta) / (1 + beta))
    return (1 - b0) / (1 - beta)


def _adam(cls=torch.optim.Adam, lr=LR, n=3, dtype=torch.float64, **kw):
    p = torch.nn.Parameter(torch.linspace(-1, 1, n, dtype=dtype))
    return p, cls([p], lr=lr, **kw)


@pytest.mark.parametrize("shape", ["linear", "cosine"])
@pytest.mark.parametrize("comp", ["none", "noise", "linear"])
@pytest.mark.parametrize(
    ("b0", "b1", "start", "end"), [(0.9, 0.5, 10, 60), (0.95, 0.8, 0, None), (0.5, 0.9, 5, 20)]
)
def test_trajectory(shape, comp, b0, b1, start, end):
    total = 80
    _, opt = _adam(betas=(0.8, 0.99))
    m = optim.MomentumDecay(
        opt, total, beta1_start=b0, beta1_end=b1, start=start, end=end, shape=shape, compensation=comp
    )
    s1 = total if end is None else end
    for s in range(0, total + 15):
        if s:
            m.step()
        beta = expected_beta1(s, b0, b1, start, s1, shape)
        betas = opt.param_groups[0]["betas"]
        assert isinstance(betas, tuple) and all(type(b) is float for b in betas)
        assert betas[1] == 0.99
        assert betas[0] == pytest.approx(beta, abs=1e-15)
        assert m.beta1() == pytest.approx(beta, abs=1e-15)
        c = expected_c(beta, b0, comp)
        assert m.factor() == pytest.approx(c, rel=1e-14)
        assert m.factor(s) == pytest.approx(c, rel=1e-14)
        assert opt.param_groups[0]["lr"] == pytest.approx(LR * c, rel=1e-12)
    assert opt.param_groups[0]["betas"][0] == pytest.approx(b1, abs=1e-15)


def test_noise_and_linear_values_at_the_end():
    """Spot values: 0.9 → 0.5 gives √(0.1·1.5/(1.9·0.5)) and 0.1/0.5."""
    for comp, want in (("noise", math.sqrt(0.15 / 0.95)), ("linear", 0.2)):
        _, opt = _adam()
        m = optim.MomentumDecay(opt, 4, compensation=comp)
        for _ in range(4):
            m.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(LR * want, rel=1e-13)


def test_fractional_start_end_equal_step_counts():
    _, a = _adam()
    _, b = _adam()
    ma = optim.MomentumDecay(a, 200, start=0.1, end=0.6, shape="cosine")
    mb = optim.MomentumDecay(b, 200, start=20, end=120, shape="cosine")
    assert (ma.start, ma.end) == (20, 120)
    for _ in range(150):
        ma.step()
        mb.step()
        assert a.param_groups[0]["betas"] == b.param_groups[0]["betas"]
        assert a.param_groups[0]["lr"] == b.param_groups[0]["lr"]
    _, c = _adam()
    assert optim.MomentumDecay(c, 200, end=1.0).end == 200
    assert optim.MomentumDecay(c, 200, end=1).end == 1  # an int is a step count


def _grad_step(p, opt, k):
    p.grad = torch.sin(torch.arange(p.numel(), dtype=p.dtype) * 0.7 + k)
    opt.step()


@pytest.mark.parametrize("comp", ["noise", "linear"])
def test_composes_with_cosine_annealing(comp):
    p, opt = _adam(lr=0.01)
    T_max = 50
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=T_max, eta_min=0.0)
    m = optim.MomentumDecay(opt, 40, start=5, shape="cosine", compensation=comp)
    for s in range(1, T_max):
        _grad_step(p, opt, s)
        sched.step()
        m.step()
        cos = 0.01 * (1 + math.cos(math.pi * s / T_max)) / 2
        want = cos * expected_c(expected_beta1(s, 0.9, 0.5, 5, 40, "cosine"), 0.9, comp)
        assert opt.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("kind", ["constant", "cosine"])
def test_composes_with_trainer_lr_schedule(kind):
    p, opt = _adam(cls=torch.optim.AdamW, lr=0.02)
    warm, total = 5, 60
    sched = LRSchedule(opt, warm, total, kind)
    m = optim.MomentumDecay(opt, total)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.02 / warm, rel=1e-12)
    for s in range(1, total):
        _grad_step(p, opt, s)
        sched.step()
        m.step()
        f = min(1.0, (s + 1) / warm)
        if kind == "cosine" and s >= warm:
            f *= 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
        want = 0.02 * f * expected_c(expected_beta1(s, 0.9, 0.5, 0, total, "linear"), 0.9, "noise")
        assert opt.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12)


# -- real optimizer steps: the changed betas are honoured by every implementation ------------------------------
def reference_adam(p0, grads, betas1, lrs, beta2=0.999, eps=1e-8, wd=0.0, decoupled=False):
    """Adam (Kingma & Ba 2015, Alg. 1) / AdamW (Loshchilov & Hutter 2019) with a per-step β1 and lr."""
    p, m, v = p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)
    for k, (g, b1, lr) in enumerate(zip(grads, betas1, lrs), start=1):
        if decoupled:
            p = p * (1 - lr * wd)
        elif wd:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - b1**k)
        v_hat = v / (1 - beta2**k)
        p = p - lr * m_hat / (v_hat.sqrt() + eps)
    return p, m


MODES = [
    (torch.optim.Adam, {}),
    (torch.optim.Adam, {"foreach": False}),
    (torch.optim.Adam, {"foreach": True}),
    (torch.optim.Adam, {"fused": True}),
    (torch.optim.AdamW, {"foreach": False}),
    (torch.optim.AdamW, {"foreach": True}),
    (torch.optim.AdamW, {"fused": True}),
    (torch.optim.Adam, {"foreach": False, "betas": "tensor"}),
    (torch.optim.AdamW, {"fused": True, "lr": "tensor"}),
]


@pytest.mark.parametrize(("cls", "kw"), MODES, ids=lambda x: getattr(x, "__name__", None) or str(x))
def test_real_steps_use_the_scheduled_betas(cls, kw):
    kw = dict(kw)
    if kw.get("betas") == "tensor":
        kw["betas"] = (torch.tensor(0.9, dtype=torch.float64), torch.tensor(0.999, dtype=torch.float64))
    lr0 = 0.05
    if kw.get("lr") == "tensor":
        kw["lr"] = torch.tensor(lr0, dtype=torch.float64)
    else:
        kw["lr"] = lr0
    wd = 0.1 if cls is torch.optim.AdamW else 0.0
    p = torch.nn.Parameter(torch.linspace(-1, 1, 7, dtype=torch.float64))
    p0 = p.detach().clone()
    try:
        opt = cls([p], weight_decay=wd, **kw)
        m = optim.MomentumDecay(opt, 6, beta1_start=0.9, beta1_end=0.3, compensation="linear")
        grads = [torch.cos(torch.arange(7, dtype=torch.float64) * (k + 1)) for k in range(8)]
        used_b1, used_lr = [], []
        for g in grads:
            b1 = opt.param_groups[0]["betas"][0]
            used_b1.append(float(b1))
            used_lr.append(float(opt.param_groups[0]["lr"]))
            p.grad = g.clone()
            opt.step()
            m.step()
    except (NotImplementedError, RuntimeError) as e:
        if "fused" in kw and ("not supported" in str(e) or isinstance(e, NotImplementedError)):
            pytest.skip(f"fused {cls.__name__} unavailable here: {e}")
        raise
    want_b1 = [expected_beta1(s, 0.9, 0.3, 0, 6, "linear") for s in range(8)]
    assert used_b1 == pytest.approx(want_b1, abs=1e-15)
    assert used_lr == pytest.approx([lr0 * (0.1 / (1 - b)) for b in want_b1], rel=1e-12)
    if isinstance(kw.get("betas", (0.0,))[0], torch.Tensor):
        assert opt.param_groups[0]["betas"][0] is kw["betas"][0]  # updated in place
    if isinstance(kw["lr"], torch.Tensor):
        assert opt.param_groups[0]["lr"] is kw["lr"]
    want_p, want_m = reference_adam(p0, grads, want_b1, used_lr, wd=wd, decoupled=cls is torch.optim.AdamW)
    torch.testing.assert_close(opt.state[p]["exp_avg"], want_m, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(p.detach(), want_p, rtol=1e-12, atol=1e-14)
    # and the decay made a difference: plain Adam with β1 fixed at 0.9 ends elsewhere
    fixed_p, _ = reference_adam(p0, grads, [0.9] * 8, [lr0] * 8, wd=wd, decoupled=cls is torch.optim.AdamW)
    assert (p.detach() - fixed_p).abs().max() > 1e-3


# -- state ---------------------------------------------------------------------------------------------------
def _run(n, state=None, steps_total=40):
    p = torch.nn.Parameter(torch.linspace(-1, 1, 5, dtype=torch.float64))
    opt = torch.optim.AdamW([p], lr=0.01, foreach=False)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps_total)
    m = optim.MomentumDecay(opt, steps_total, start=0.25, end=0.75, shape="cosine")
    k0 = 0
    if state is not None:
        p.data.copy_(state["p"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        m.load_state_dict(json.loads(state["momentum"]))
        k0 = state["k"]
    for k in range(k0, k0 + n):
        _grad_step(p, opt, k)
        sched.step()
        m.step()
    return p, opt, sched, m, k0 + n


def test_state_dict_round_trip_continues_identically():
    p_a, opt_a, _, m_a, _ = _run(30)
    p_b, opt_b, sched_b, m_b, k = _run(12)
    sd = m_b.state_dict()
    assert all(type(v) in (int, float, str) for v in sd.values())
    assert sd["step"] == 12 and sd["factor"] == m_b.factor()
    saved = {
        "p": p_b.detach().clone(),
        "opt": opt_b.state_dict(),
        "sched": sched_b.state_dict(),
        "momentum": json.dumps(sd),  # plain values survive JSON
        "k": k,
    }
    p_c, opt_c, _, m_c, _ = _run(18, state=saved)
    assert m_c.state_dict() == m_a.state_dict()
    assert opt_c.param_groups[0]["betas"] == opt_a.param_groups[0]["betas"]
    assert opt_c.param_groups[0]["lr"] == opt_a.param_groups[0]["lr"]
    assert torch.equal(p_c.detach(), p_a.detach())


def test_load_sets_betas_and_checks_state():
    _, opt = _adam()
    m = optim.MomentumDecay(opt, 10)
    m.load_state_dict({"step": 5, "factor": 0.7})
    assert opt.param_groups[0]["betas"][0] == pytest.approx(0.7, abs=1e-15)
    assert m.factor() == 0.7 and m.status() == {"beta1": m.beta1(), "lr_factor": 0.7}
    for bad in (
        {},
        {"step": -1, "factor": 1.0},
        {"step": 1, "factor": float("nan")},
        {"step": 1.5, "factor": 1},
    ):
        with pytest.raises(ValueError, match="momentum state"):
            m.load_state_dict(bad)


# -- errors ----------------------------------------------------------------------------------------------------
def test_sgd_is_refused():
    p = torch.nn.Parameter(torch.zeros(2))
    sgd = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    with pytest.raises(
        ValueError, match=r"SGD .*MomentumDecay needs an optimizer with betas \(Adam, AdamW\)"
    ):
        optim.MomentumDecay(sgd, 100)
    with pytest.raises(ValueError, match=r"MomentumDecay needs an optimizer with betas"):
        optim.build_momentum(sgd, 100)


@pytest.mark.parametrize(
    ("params", "pattern"),
    [
        ({"beta1_strat": 0.8}, r"momentum\.beta1_strat is not a parameter .*did you mean 'beta1_start'"),
        ({"enabled": True}, r"momentum\.enabled is not a parameter"),
        ({"beta1_start": 1.0}, r"momentum\.beta1_start=1\.0 is invalid; allowed: a number in \[0, 1\)"),
        ({"beta1_end": -0.1}, r"momentum\.beta1_end=-0\.1 is invalid"),
        ({"beta1_end": True}, r"momentum\.beta1_end=True is invalid"),
        ({"beta1_end": "0.5"}, r"momentum\.beta1_end='0\.5' is invalid"),
        ({"start": 50, "end": 40}, r"momentum\.end=40 \(step 40\) must come after momentum\.start=50"),
        ({"start": 0.5, "end": 0.5}, r"momentum\.end=0\.5 .* must come after momentum\.start=0\.5"),
        ({"end": 1.5}, r"momentum\.end=1\.5 is invalid"),
        ({"start": -1}, r"momentum\.start=-1 is invalid"),
        (
            {"shape": "cos"},
            r"momentum\.shape='cos' is not known \(did you mean 'cosine'\?\); allowed: linear, cosine, demon",
        ),
        (
            {"compensation": "sqrt"},
            r"momentum\.compensation='sqrt' is not known; allowed: none, noise, linear",
        ),
        ({"total_steps": 0}, r"momentum\.total_steps=0 is invalid"),
    ],
)
def test_bad_params_name_themselves(params, pattern):
    _, opt = _adam()
    params = {"total_steps": 100, **params}
    with pytest.raises(ValueError, match=pattern):
        optim.build_momentum(opt, **params)


def test_build_momentum_passes_parameters():
    _, opt = _adam(betas=(0.9, 0.98))
    m = optim.build_momentum(opt, total_steps=10, beta1_end=0.6, shape="cosine", compensation="none")
    assert isinstance(m, optim.MomentumDecay)
    assert (m.beta1_end, m.shape, m.compensation, m.end) == (0.6, "cosine", "none", 10)
    assert opt.param_groups[0]["betas"] == (0.9, 0.98)


def test_trainer_resume_with_momentum_is_exact(tmp_path):
    """The trainer's momentum section end to end: a run interrupted and resumed equals an unbroken one."""
    extra = ["momentum.enabled=true", "momentum.shape=cosine", "momentum.end=0.8", "weighting.name=min-snr"]
    extra += ["optim.schedule=cosine", "optim.warmup_steps=5"]
    cfg = config.resolve(overrides=TINY + extra)
    a = Trainer(cfg, tmp_path / "a", log=lambda _: None)
    a.run()
    b = Trainer(cfg, tmp_path / "b", log=lambda _: None)
    for _ in range(13):
        b.train_step()
    b.save_checkpoint()
    c = Trainer(cfg, tmp_path / "b", resume=True, log=lambda _: None)
    assert c.step == 13 and c.momentum.state_dict() == b.momentum.state_dict()
    c.run()
    assert c.momentum.state_dict() == a.momentum.state_dict()
    assert c.optimizer.param_groups[0]["betas"] == a.optimizer.param_groups[0]["betas"] == (0.5, 0.999)
    assert c.optimizer.param_groups[0]["lr"] == a.optimizer.param_groups[0]["lr"]
    for pa, pc in zip(a.model.parameters(), c.model.parameters()):
        assert torch.equal(pa, pc)


# -- shape="demon" ----------------------------------------------------------------------------------------
def demon_beta1(s, b0, s0, s1, floor=0.0):
    """Chen et al. (Demon), eq. 2: β(x) = β0·(1 − x)/((1 − β0) + β0·(1 − x)), x the progress of the decay."""
    x = min(1.0, max(0.0, (s - s0) / (s1 - s0)))
    return max(floor, b0 * (1 - x) / ((1 - b0) + b0 * (1 - x)))


@pytest.mark.parametrize("floor,comp", [(None, None), (0.3, None), (None, "noise"), (0.2, "none")])
def test_demon_trajectory_against_the_formula(floor, comp):
    p, opt = _adam()
    kw = {} if floor is None else {"beta1_end": floor}
    if comp is not None:
        kw["compensation"] = comp
    m = optim.MomentumDecay(opt, 100, start=10, end=90, shape="demon", **kw)
    assert m.compensation == (comp or "linear") and m.beta1_end == (floor or 0.0)
    for s in range(0, 101):
        beta = demon_beta1(s, 0.9, 10, 90, floor or 0.0)
        assert opt.param_groups[0]["betas"][0] == pytest.approx(beta, abs=1e-15)
        assert opt.param_groups[0]["lr"] == pytest.approx(
            LR * expected_c(beta, 0.9, comp or "linear"), rel=1e-12
        )
        opt.step()
        m.step()
    # at the end with no floor: β1 = 0 and (linear compensation) lr·(1 − 0.9)
    if floor is None and comp is None:
        assert opt.param_groups[0]["betas"][0] == 0.0
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * LR, rel=1e-12)
    # half-way the rule is well above the linear decay: β(½) = 0.9·0.5/(0.1 + 0.45) ≈ 0.818
    assert demon_beta1(50, 0.9, 10, 90) == pytest.approx(0.9 * 0.5 / 0.55)


def test_demon_composes_with_a_scheduler_and_resumes():
    p, opt = _adam()
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=40)
    m = optim.MomentumDecay(opt, 40, shape="demon")
    for s in range(1, 41):
        opt.step()
        sched.step()
        m.step()
        cos = 0.5 * (1 + math.cos(math.pi * s / 40))
        assert opt.param_groups[0]["lr"] == pytest.approx(
            LR * cos * expected_c(demon_beta1(s, 0.9, 0, 40), 0.9, "linear"), rel=1e-9, abs=1e-15
        )
        if s == 17:
            state = json.loads(json.dumps(m.state_dict()))
            p2, opt2 = _adam()
            opt2.load_state_dict(opt.state_dict())
            m2 = optim.MomentumDecay(opt2, 40, shape="demon")
            m2.load_state_dict(state)
    for _ in range(5):
        m2.step()
        opt2.step()
    assert m2.beta1() == pytest.approx(demon_beta1(22, 0.9, 0, 40))


def test_demon_floor_above_start_is_refused():
    _, opt = _adam()
    with pytest.raises(ValueError, match=r"momentum\.beta1_end=0\.95 .*floor <= beta1_start=0\.9"):
        optim.MomentumDecay(opt, 10, shape="demon", beta1_end=0.95)
