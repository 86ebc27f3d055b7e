"""Loss weightings: values against formulas written out here, and the prediction-type equivalence."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from diffusion_curriculum import weighting
from diffusion_curriculum.process import DiscreteProcess, EDMProcess

T = 1000
TS = [0, 1, 10, 100, 250, 500, 750, 900, 999]
SIGMAS = [0.002, 0.05, 0.3, 0.5, 1.0, 2.5, 10.0, 80.0]


# -- independent ᾱ tables (numpy, not the process module) -----------------------------------------------------
def ac_linear() -> np.ndarray:
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, T))


def ac_cosine(s: float = 0.008) -> np.ndarray:
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    betas = np.array([min(1 - f(i + 1) / f(i), 0.999) for i in range(T)])
    return np.cumprod(1.0 - betas)


DISCRETE = {"linear": (DiscreteProcess.linear, ac_linear), "cosine": (DiscreteProcess.cosine, ac_cosine)}


def expected_discrete(name: str, pred: str, ac: np.ndarray, **p) -> np.ndarray:
    """Each weighting written out per prediction type, from ᾱ alone."""
    snr = ac / (1 - ac)
    if name == "min-snr":
        g = p.get("gamma", 5.0)
        return {
            "eps": np.minimum(snr, g) / snr,
            "v": np.minimum(snr, g) / (snr + 1),
            "x0": np.minimum(snr, g),
        }[pred]
    if name == "soft-min-snr":
        g = p.get("gamma", 5.0)
        return {"eps": g / (snr + g), "v": snr * g / ((snr + g) * (snr + 1)), "x0": snr * g / (snr + g)}[pred]
    if name == "p2":
        k, g = p.get("k", 1.0), p.get("gamma", 1.0)
        eps = 1.0 / (k + snr) ** g
        return {"eps": eps, "v": eps * snr * (1 - ac), "x0": eps * snr}[pred]
    if name == "edm":
        sd = p.get("sigma_data", 0.5)
        sig2 = (1 - ac) / ac
        lam = (sig2 + sd**2) / (sig2 * sd**2)
        return {"eps": lam * sig2, "v": lam * (1 - ac), "x0": lam}[pred]
    raise AssertionError(name)


CASES = [
    ("min-snr", {}),
    ("min-snr", {"gamma": 1.5}),
    ("soft-min-snr", {}),
    ("soft-min-snr", {"gamma": 2.0}),
    ("p2", {}),
    ("p2", {"k": 2.0, "gamma": 0.5}),
    ("edm", {}),
    ("edm", {"sigma_data": 1.0}),
]


@pytest.mark.parametrize("sched", ["linear", "cosine"])
@pytest.mark.parametrize("pred", ["eps", "v", "x0"])
@pytest.mark.parametrize(("name", "params"), CASES)
def test_discrete_values(sched, pred, name, params):
    make, ac_fn = DISCRETE[sched]
    w = weighting.build(name, make(T=T), pred, **params)
    t = torch.tensor(TS)
    got = w(t)
    assert got.dtype == torch.float32 and got.shape == (len(TS),) and got.device == t.device
    want = expected_discrete(name, pred, ac_fn()[TS], **params)
    np.testing.assert_allclose(got.numpy(), want, rtol=2e-6)


def expected_edm(name: str, pred: str, sigma: np.ndarray, sd: float, **p) -> np.ndarray:
    snr = 1.0 / sigma**2
    c_out2 = (sigma * sd) ** 2 / (sigma**2 + sd**2)  # EDM Table 1
    if name == "min-snr":
        lam = np.minimum(snr, p.get("gamma", 5.0))
    elif name == "soft-min-snr":
        if pred == "v" and "gamma" not in p:  # Crowson et al. 2024, written on the F-target
            return (sigma * sd) ** 2 / (sigma**2 + sd**2) ** 2
        g = p.get("gamma", 1.0 / sd**2)
        lam = 1.0 / (1.0 / snr + 1.0 / g)
    elif name == "p2":
        lam = snr / (p.get("k", 1.0) + snr) ** p.get("gamma", 1.0)
    elif name == "edm":
        lam = (sigma**2 + sd**2) / (sigma * sd) ** 2
    return {"eps": lam * sigma**2, "v": lam * c_out2, "x0": lam}[pred]


@pytest.mark.parametrize("pred", ["eps", "v", "x0"])
@pytest.mark.parametrize(("name", "params"), [c for c in CASES if "sigma_data" not in c[1]])
def test_edm_process_values(pred, name, params):
    proc = EDMProcess(sigma_data=0.5)
    w = weighting.build(name, proc, pred, **params)
    sigma = torch.tensor(SIGMAS)
    got = w(sigma)
    assert got.dtype == torch.float32 and got.shape == (len(SIGMAS),)
    want = expected_edm(name, pred, np.array(SIGMAS, dtype=np.float64), 0.5, **params)
    np.testing.assert_allclose(got.numpy(), want, rtol=2e-6)


def test_edm_on_f_target_is_exactly_one():
    for sd in (0.5, 1.0, 0.3):
        w = weighting.build("edm", EDMProcess(sigma_data=sd), "v")
        assert torch.equal(w(torch.tensor(SIGMAS)), torch.ones(len(SIGMAS)))


def test_none_is_ones():
    w = weighting.build("none", DiscreteProcess.linear(T=10), "eps")
    assert torch.equal(w(torch.tensor([0, 3, 9])), torch.ones(3))


# -- the equivalence across prediction types -----------------------------------------------------------------
def _setup(proc, B=64, D=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, D, generator=g, dtype=torch.float64)
    noise = torch.randn(B, D, generator=g, dtype=torch.float64)
    if proc.continuous:
        t = torch.exp(torch.randn(B, generator=g, dtype=torch.float64) * 1.5 - 1.0)
    else:
        t = torch.randint(0, proc.T, (B,), generator=g)
    return g, x0, noise, t, proc.add_noise(x0, noise, t)


def _outputs_for(proc, x0_hat, x_t, t):
    """The network output of each prediction type that implies the same clean-sample estimate x0_hat."""
    eps_hat = proc.predict_eps(x0_hat, x_t, t, "x0")
    return {"x0": x0_hat, "eps": eps_hat, "v": proc.target(x0_hat, eps_hat, t, "v", x_t=x_t)}


PROCESSES = {
    "linear": lambda: DiscreteProcess.linear(T=T),
    "cosine": lambda: DiscreteProcess.cosine(T=T),
    "edm": lambda: EDMProcess(sigma_data=0.5),
}
EQUIV = ["min-snr", "soft-min-snr", "p2", "edm", "speed"]


@pytest.mark.parametrize(
    ("pname", "name"), [(p, n) for p in PROCESSES for n in EQUIV if not (p == "edm" and n == "speed")]
)
def test_same_weighted_loss_for_every_prediction(pname, name):
    """λ_eps‖ε̂−ε‖² = λ_v‖v̂−v‖² = λ_x0‖x̂0−x0‖² for one and the same estimate: catches wrong conversion factors."""
    proc = PROCESSES[pname]()
    if name == "speed" and importlib.util.find_spec("diffusion_curriculum.timesteps.speed") is None:
        pytest.skip("timesteps.speed not available yet")
    g, x0, noise, t, x_t = _setup(proc)
    x0_hat = x0 + 0.3 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    outs = _outputs_for(proc, x0_hat, x_t, t)
    losses = {}
    for pred, out in outs.items():
        # the construction is right: each output decodes back to the same x0_hat
        torch.testing.assert_close(proc.predict_x0(out, x_t, t, pred), x0_hat, rtol=1e-9, atol=1e-9)
        target = proc.target(x0, noise, t, pred, x_t=x_t)
        w = weighting.build(name, proc, pred)(t).double()
        losses[pred] = w * (out - target).pow(2).sum(1)
    torch.testing.assert_close(losses["eps"], losses["x0"], rtol=1e-5, atol=0)
    torch.testing.assert_close(losses["v"], losses["x0"], rtol=1e-5, atol=0)
    if name == "min-snr":  # and the level is Min-SNR's x0-space weight min(SNR, 5)
        snr = 1 / t.pow(2) if proc.continuous else (lambda a: a / (1 - a))(proc.alphas_cumprod[t])
        want = snr.clamp(max=5.0) * (x0_hat - x0).pow(2).sum(1)
        torch.testing.assert_close(losses["x0"], want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("pred", ["eps", "v", "x0"])
@pytest.mark.parametrize("sd", [0.5, 1.0])
def test_edm_effective_loss_on_edm_process(pred, sd):
    """With the ``edm`` weighting the trainer's loss w·‖out − target‖² is λ(σ)‖D − x0‖², D = predict_x0(out)."""
    proc = EDMProcess(sigma_data=sd)
    g, x0, noise, sigma, x_t = _setup(proc, seed=1)
    out = torch.randn(x0.shape, generator=g, dtype=torch.float64)  # any network output
    target = proc.target(x0, noise, sigma, pred, x_t=x_t)
    w = weighting.build("edm", proc, pred)(sigma).double()
    got = w * (out - target).pow(2).sum(1)
    lam = (sigma**2 + sd**2) / (sigma * sd) ** 2
    want = lam * (proc.predict_x0(out, x_t, sigma, pred) - x0).pow(2).sum(1)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def test_speed_matches_change_aware_weights():
    speed_mod = pytest.importorskip("diffusion_curriculum.timesteps.speed")
    for make in (DiscreteProcess.linear, DiscreteProcess.cosine):
        proc = make(T=T)
        for params in ({}, {"tau": 500, "lam": 0.8}):
            cw = speed_mod.change_aware_weights(proc, **params)
            t = torch.arange(T)
            ac = proc.alphas_cumprod
            snr = ac / (1 - ac)
            got_eps = weighting.build("speed", proc, "eps", **params)(t)
            assert got_eps.dtype == torch.float32
            torch.testing.assert_close(got_eps, cw.float(), rtol=0, atol=0)
            got_x0 = weighting.build("speed", proc, "x0", **params)(t)
            torch.testing.assert_close(got_x0.double(), cw * snr, rtol=1e-6, atol=0)
            got_v = weighting.build("speed", proc, "v", **params)(t)
            torch.testing.assert_close(got_v.double(), cw * snr * (1 - ac), rtol=1e-6, atol=0)


# -- device, dtype, inputs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["none", "min-snr", "soft-min-snr", "p2", "edm", "speed"])
def test_dtype_shape_device(name):
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        proc = DiscreteProcess.cosine(T=50)
        t = torch.tensor([0, 7, 49], device=dev)
        w = weighting.build(name, proc, "eps")(t)
        assert w.dtype == torch.float32 and w.shape == (3,) and w.device.type == dev
        if name != "speed":
            w = weighting.build(name, EDMProcess(), "v")(torch.tensor([0.1, 1.0], device=dev))
            assert w.dtype == torch.float32 and w.shape == (2,) and w.device.type == dev


def test_wrong_timestep_dtype():
    with pytest.raises(ValueError, match="integer timesteps"):
        weighting.build("min-snr", DiscreteProcess.linear(T=10), "eps")(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="float noise levels"):
        weighting.build("min-snr", EDMProcess(), "eps")(torch.tensor([1]))


# -- errors ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "pred", "params", "pattern"),
    [
        ("min_snr", "eps", {}, r"weighting\.name='min_snr' is not known \(did you mean 'min-snr'\?\)"),
        ("min-snr", "eps", {"gama": 3}, r"weighting\.gama is not a parameter .*did you mean 'gamma'"),
        ("min-snr", "eps", {"gamma": 0}, r"weighting\.gamma=0 is invalid"),
        ("min-snr", "eps", {"gamma": -1.0}, r"weighting\.gamma=-1\.0 is invalid"),
        ("min-snr", "eps", {"gamma": True}, r"weighting\.gamma=True is invalid"),
        ("min-snr", "eps", {"gamma": float("inf")}, r"weighting\.gamma=inf is invalid"),
        ("soft-min-snr", "eps", {"gamma": 0.0}, r"weighting\.gamma=0\.0 is invalid"),
        ("p2", "eps", {"k": -1}, r"weighting\.k=-1 is invalid"),
        ("p2", "eps", {"gamma": "1"}, r"weighting\.gamma='1' is invalid"),
        ("edm", "eps", {"sigma_data": 0}, r"weighting\.sigma_data=0 is invalid"),
        ("speed", "eps", {"lam": 0.3}, r"weighting\.lam=0\.3 is invalid; allowed: a number in \[0\.5, 1\]"),
        ("speed", "eps", {"tau": 1000}, r"weighting\.tau=1000 is invalid"),
        ("speed", "eps", {"tau": 0.7}, r"weighting\.tau=0\.7 is invalid"),
        ("min-snr", "epsilon", {}, r"prediction='epsilon' is not known \(did you mean 'eps'\?\)"),
    ],
)
def test_errors_name_the_parameter(name, pred, params, pattern):
    with pytest.raises(ValueError, match=pattern):
        weighting.build(name, DiscreteProcess.linear(T=T), pred, **params)


def test_speed_on_edm_is_refused():
    with pytest.raises(ValueError, match=r"weighting\.name='speed' needs a discrete process"):
        weighting.build("speed", EDMProcess(), "v")


def test_x0_to_helper():
    lam = torch.tensor([2.0, 3.0], dtype=torch.float64)
    snr = torch.tensor([4.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(weighting.x0_to("eps", lam, snr), lam / snr)
    torch.testing.assert_close(weighting.x0_to("v", lam, snr), lam / (snr + 1))
    torch.testing.assert_close(weighting.x0_to("v", lam, snr, sigma_data=0.5), lam / (snr + 4))
    torch.testing.assert_close(weighting.x0_to("x0", lam, snr), lam)
    with pytest.raises(ValueError, match="prediction='e' is not known"):
        weighting.x0_to("e", lam, snr)


# -- the Weighting object and the learned edm2-uncertainty -------------------------------------------------
def test_every_weighting_is_a_module_with_one_weighted_call():
    p = DiscreteProcess.linear(1000)
    t = torch.tensor([0, 10, 500, 999])
    x = torch.tensor([0.5, 1.0, 2.0, 3.0])
    s = torch.tensor([1.0, 2.0, 0.5, 1.5])
    for name in weighting.REGISTRY:
        if name in ("cosmap", "sigma_sqrt"):  # flow-only: tested in test_flow_weighting.py
            continue
        w = weighting.build(name, p, "eps")
        assert isinstance(w, torch.nn.Module) and isinstance(w, weighting.Weighting)
        if name == "edm2-uncertainty":
            continue
        assert not list(w.parameters())
        assert torch.equal(w.weighted(t, x), w(t) * x)
        assert torch.equal(w.weighted(t, x, s), w(t) * s * x)  # the trainer's order of factors


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("process", [DiscreteProcess.cosine(1000), EDMProcess()])
def test_edm2_uncertainty_equals_its_closed_form_for_fixed_u(process, prediction):
    w = weighting.build("edm2-uncertainty", process, prediction, channels=16, seed=3)
    assert sum(p.numel() for p in w.parameters()) == 17  # one linear layer, one output
    with torch.no_grad():
        w.u_weight.copy_(torch.linspace(-1, 1, 16)[None])
        w.u_bias.fill_(0.3)
    t = torch.tensor([0, 100, 600, 999]) if not process.continuous else torch.tensor([0.01, 0.3, 2.0, 60.0])
    x = torch.tensor([0.2, 0.1, 0.05, 0.01])
    base = weighting.build("edm", process, prediction)(t).double()
    # u by hand: c_noise = ln(σ)/4, features √2·cos(2π(f·c + φ)), u = W·feats + b
    sigma = t.double() if process.continuous else process.sigma(t).double()
    c = sigma.log() / 4
    gen = torch.Generator().manual_seed(3)
    f, phi = torch.randn(16, generator=gen).double(), torch.rand(16, generator=gen).double()
    feats = math.sqrt(2) * torch.cos(2 * math.pi * (c[:, None] * f[None] + phi[None]))
    u = feats @ torch.linspace(-1, 1, 16).double() + 0.3
    expect = base / u.exp() * x + u
    assert torch.allclose(w.u(t).double(), u, rtol=1e-4, atol=1e-5)
    assert torch.allclose(w.weighted(t, x).double(), expect, rtol=1e-4, atol=1e-5)
    scale = torch.tensor([1.0, 2.0, 3.0, 0.5])
    assert torch.allclose(w.weighted(t, x, scale).double(), scale * expect, rtol=1e-4, atol=1e-5)
    assert torch.allclose(w(t).double(), base / u.exp(), rtol=1e-4)


def test_edm2_uncertainty_starts_at_its_base_and_learns_the_loss_level():
    """Drop-in: train u alone against a fixed per-level loss; e^u must approach λ·E[L] at each level."""
    p = DiscreteProcess.linear(1000)
    w = weighting.build("edm2-uncertainty", p, "eps", base="none")
    t = torch.arange(0, 1000, 50)
    true_loss = 0.3 * torch.exp(-t.double() / 200.0).float() + 0.001  # larger at small t, as on real data
    assert torch.equal(w.weighted(t, true_loss), true_loss)  # u ≡ 0 at the start
    opt = torch.optim.Adam(w.parameters(), lr=0.02)
    gen = torch.Generator().manual_seed(0)
    for _ in range(1500):
        noisy = true_loss * (1 + 0.3 * torch.randn(len(t), generator=gen)).abs()
        loss = w.weighted(t, noisy).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    learned = w.u(t).detach().exp()
    assert torch.allclose(learned.log(), true_loss.log(), atol=0.45)  # within ~1.5× across a 80× range
    # and the effective weights equalise the levels: λ/e^u · L ≈ 1 everywhere
    eff = (w(t) * true_loss).detach()
    assert eff.max() / eff.min() < 2.5


def test_edm2_uncertainty_errors_and_state():
    p = DiscreteProcess.linear(100)
    with pytest.raises(
        ValueError, match="weighting.base.*'edm2-uncertainty'|weighting.base='edm2-uncertainty'"
    ):
        weighting.build("edm2-uncertainty", p, base="edm2-uncertainty")
    with pytest.raises(ValueError, match="weighting.base='mni-snr'.*did you mean 'min-snr'"):
        weighting.build("edm2-uncertainty", p, base="mni-snr")
    with pytest.raises(ValueError, match="weighting.channels=0"):
        weighting.build("edm2-uncertainty", p, channels=0)
    a = weighting.build("edm2-uncertainty", p, seed=1)
    with torch.no_grad():
        a.u_weight.normal_()
    b = weighting.build("edm2-uncertainty", p, seed=1)
    b.load_state_dict(a.state_dict())
    t = torch.arange(100)
    assert torch.equal(a.u(t), b.u(t))
    # building one touches no global random stream
    torch.manual_seed(5)
    weighting.build("edm2-uncertainty", p)
    x = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(3), x)
