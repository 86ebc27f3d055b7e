"""The device contract (docs/design.md): no host read of device data in a training step, for every sampler,
process and conditioning; samplers that draw on the CPU whatever the default device, refuse a generator on
another device, and observe shape-only (meta) tensors; models that compile in one graph; observations read
a fixed number of steps late, and resumed exactly."""

import pytest
import torch

from conftest import TINY
from diffusion_curriculum import config, models, timesteps, weighting
from diffusion_curriculum.process import DiscreteProcess, EDMProcess, FlowProcess
from diffusion_curriculum.timesteps import observations
from diffusion_curriculum.training.trainer import Trainer
from sync_recorder import recording

PROCESSES = {
    "discrete": (DiscreteProcess.linear(1000), []),
    "continuous": (EDMProcess(), ["process.name=edm", "eval.method=auto"]),
    "flow": (FlowProcess(), ["process.name=flow", "prediction=v", "eval.method=auto"]),
}
#: parameters that make a strategy do its real per-step work within a few steps
PARAMS = {
    "interval": ["sampler.lo=0", "sampler.hi=500"],
    "ddc": ["sampler.clusters=4", "sampler.window=2", "sampler.max_steps_per_stage=5"],
    "loss-second-moment": ["sampler.history=1"],
}
CASES = [
    (name, kind, cond)
    for name in timesteps.names()
    for kind in timesteps.REGISTRY[name].supports
    for cond in (False, True)
]


def _trainer(tmp_path, name, kind, cond, extra=()):
    overrides = [*TINY, "steps=40", "log_every=1000", "checkpoint_every=0", "metrics.enabled=false"]
    overrides += [*PROCESSES[kind][1], f"sampler.name={name}", *PARAMS.get(name, []), *extra]
    if name == "interval" and kind == "flow":
        overrides.append("sampler.hi=0.5")
    if name == "loss-second-moment" and kind == "discrete":
        overrides.append("process.T=20")  # warm within a few steps: its importance draws are exercised too
    if cond:
        overrides.append("cond.enabled=true")
    return Trainer(config.resolve(overrides=overrides), tmp_path / "run")


@pytest.mark.parametrize(
    "name,kind,cond", CASES, ids=[f"{n}-{k}-{'cond' if c else 'uncond'}" for n, k, c in CASES]
)
def test_training_steps_make_no_host_read_of_device_data(tmp_path, name, kind, cond):
    """20 steps (after 8 that warm the samplers' histories and lags) off the log cadence: no synchronising op
    on anything that would live on the training device."""
    assert _host_reads(_trainer(tmp_path, name, kind, cond), warm=8, steps=20) == []


def _host_reads(t, warm: int, steps: int) -> list[tuple[str, str]]:
    """The synchronising ops on device data (op, file:line) over ``steps`` steps of trainer ``t``, after ``warm``."""
    for _ in range(warm):
        t.advance()
    with recording(*_device_data(t)) as rec:
        for _ in range(steps):
            t.advance()
    return rec.found


def _device_data(t):
    """What a trainer keeps on its device: the models, the data, its counters and statistics."""
    stats = [
        v for v in getattr(getattr(t, "stats", None), "__dict__", {}).values() if isinstance(v, torch.Tensor)
    ]
    labels = [] if t.batcher.labels is None else [t.batcher.labels]
    return [t.model, t.ema, t.batcher.data, *labels, t.histogram.counts, *stats, *t._weighting_params]


#: the processes a weighting is defined on (the others refuse it in one sentence)
ONLY = {"cosmap": ("flow",), "sigma_sqrt": ("flow",), "speed": ("discrete",)}
EXTRAS = [
    (f"weighting.name={w}", kind)
    for w in sorted(weighting.REGISTRY)
    if w != "none"
    for kind in ONLY.get(w, ("discrete", "continuous", "flow"))
] + [(x, kind) for x in ("momentum.enabled=true", "optim.schedule=cosine") for kind in ("discrete", "flow")]


@pytest.mark.parametrize("extra,kind", EXTRAS)
def test_weightings_and_schedules_make_no_host_read_either(tmp_path, extra, kind):
    """Every loss weighting (the learned one too), MDLRC and the cosine learning rate, on each process."""
    assert _host_reads(_trainer(tmp_path, "uniform", kind, False, [extra]), warm=3, steps=10) == []


def test_the_recorder_finds_what_the_old_step_did(tmp_path):
    """The recorder is not blind: a float() of the loss and a bincount of the draws are found, with their lines."""
    t = _trainer(tmp_path, "uniform", "discrete", False)
    real = t.train_step

    def old_style_step():
        per_sample = real()
        float(per_sample.mean())
        torch.bincount(per_sample.long().clamp(min=0))
        per_sample.tolist()
        return per_sample

    t.train_step = old_style_step
    with recording(t.model, t.batcher.data) as rec:
        t.advance()
    ops = [op for op, _ in rec.found]
    assert (
        "aten._local_scalar_dense.default" in ops
        and "aten.bincount.default" in ops
        and "Tensor.tolist" in ops
    )


SAMPLERS = [(n, k) for n in timesteps.names() for k in timesteps.REGISTRY[n].supports]


def _build(name, kind):
    params = {"lo": 0, "hi": 500 if kind == "discrete" else 0.5} if name == "interval" else {}
    return timesteps.build(name, PROCESSES[kind][0], total_steps=1000, **params)


@pytest.mark.parametrize("name,kind", SAMPLERS)
def test_observe_takes_meta_tensors_and_sample_returns_them(name, kind):
    """Shape-only tensors pass through: observe reads no value of the losses on the host, and a draw goes to
    whatever device is asked."""
    s = _build(name, kind)
    for _ in range(3 * observations.WINDOW):
        d = s.sample(8, device="meta")
        assert d.t.device.type == "meta" and d.weight.device.type == "meta"
        s.observe(d.t, torch.empty(8, device="meta"))
    assert s.step == 3 * observations.WINDOW


@pytest.mark.parametrize("name,kind", SAMPLERS)
def test_the_default_device_changes_no_draw(name, kind):
    """Built and drawn under torch.set_default_device("meta"), a sampler's draws on the CPU equal the draws it
    makes without it, and so does its state after observing."""

    def run():
        s = _build(name, kind)
        g = torch.Generator().manual_seed(3)
        draws = []
        for i in range(12):
            d = s.sample(16, generator=g)
            draws.append((d.t.clone(), d.weight.clone()))
            s.observe(d.t, torch.linspace(0.1, 1.0 + i, 16, device="cpu"))
        return draws

    plain = run()
    torch.set_default_device("meta")
    try:
        under_meta = run()
    finally:
        torch.set_default_device(None)
    for (ta, wa), (tb, wb) in zip(plain, under_meta):
        assert tb.device.type == "cpu" and torch.equal(ta, tb) and torch.equal(wa, wb)


@pytest.mark.parametrize("name", timesteps.names())
def test_a_generator_on_another_device_is_refused_in_one_sentence(name):
    kind = timesteps.REGISTRY[name].supports[0]
    s = _build(name, kind)

    class CudaGenerator:  # stands for torch.Generator(device="cuda"), which a CPU-only build cannot make
        device = torch.device("cuda", 0)

    with pytest.raises(
        ValueError, match=r"draws on the CPU but was given a generator on cuda:0; pass a CPU gen"
    ):
        s.sample(4, generator=CudaGenerator())


def test_the_unit_weight_is_made_on_the_target_device():
    d = _build("uniform", "discrete").sample(4, device="meta")
    assert d.weight.device.type == "meta" and d.weight.dtype == torch.float32


# -- the lag ----------------------------------------------------------------------------------------------------
def test_observations_arrive_a_fixed_number_of_steps_late():
    """learning-progress sees step s's losses only after the window holding s and `LAG` more are complete."""
    s = timesteps.build("learning-progress", DiscreteProcess.linear(1000), buckets=4)
    W, L = observations.WINDOW, observations.LAG
    t = torch.arange(0, 1000, 125)
    for step in range(W * (L + 1) - 1):
        s.observe(t, torch.ones(8))
        assert int(s.seen.sum()) == 0, step
    s.observe(t, torch.ones(8))
    assert int(s.seen.sum()) == 8 * W  # the first window, all at once


@pytest.mark.parametrize(
    "name,params",
    [("loss-second-moment", {"history": 2}), ("learning-progress", {"buckets": 4}), ("ddc", {})],
)
def test_a_state_taken_mid_window_resumes_exactly(name, params):
    """The pending windows and the partial one travel in the state: a sampler restored mid-window draws
    exactly what the original draws from then on."""
    proc = DiscreteProcess.linear(40)
    a = timesteps.build(name, proc, total_steps=400, **params)
    g = torch.Generator().manual_seed(0)
    losses = torch.Generator().manual_seed(1)
    for _ in range(4 * observations.WINDOW + 1):  # off the window's boundary
        d = a.sample(8, generator=g)
        a.observe(d.t, torch.rand(8, generator=losses))
    assert a.state_dict()["observations"]["partial"]  # there is a partial window to carry
    b = timesteps.build(name, proc, total_steps=400, **params)
    b.load_state_dict(a.state_dict())
    gb = torch.Generator()
    gb.set_state(g.get_state())
    lb = torch.Generator()
    lb.set_state(losses.get_state())
    for _ in range(60):
        da, db = a.sample(8, generator=g), b.sample(8, generator=gb)
        assert torch.equal(da.t, db.t) and torch.equal(da.weight, db.weight)
        la, lbv = torch.rand(8, generator=losses), torch.rand(8, generator=lb)
        a.observe(da.t, la)
        b.observe(db.t, lbv)
    assert a.status() == b.status()


def test_a_checkpoint_from_before_the_lag_still_loads():
    """A sampler state without pending observations (written before they were lagged) loads, with none
    pending."""
    a = timesteps.build("loss-second-moment", DiscreteProcess.linear(40), history=2)
    state = a.state_dict()
    del state["observations"]
    b = timesteps.build("loss-second-moment", DiscreteProcess.linear(40), history=2)
    b.load_state_dict(state)
    assert b.state_dict()["observations"]["windows"] == []


# -- models -----------------------------------------------------------------------------------------------------
MODELS = {
    "mlp": ("mlp", (2,), dict(hidden=32, depth=2, time_dim=16)),
    "unet": ("unet", (1, 8, 8), dict(channels=8, channel_mult=[1, 2], attention_resolutions=[4], groups=8)),
    "dit": ("dit", (1, 8, 8), dict(patch_size=2, hidden=32, depth=2, heads=2)),
}


@pytest.mark.parametrize("cond", [False, True])
@pytest.mark.parametrize("model", list(MODELS))
def test_every_model_compiles_without_a_graph_break(model, cond):
    name, shape, params = MODELS[model]
    net = models.build(name, shape, num_classes=3 if cond else None, **params)
    x, t = torch.randn(4, *shape), torch.rand(4) * 10
    args = (x, t, torch.tensor([0, 1, 2, 3])) if cond else (x, t)
    explained = torch._dynamo.explain(net)(*args)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    if cond:  # no labels: the null class, also in one graph
        assert torch._dynamo.explain(net)(x, t).graph_break_count == 0


# -- GPU details --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("native", [True, False])
def test_bf16_autocast_only_where_the_gpu_computes_in_bf16(monkeypatch, native):
    from diffusion_curriculum.errors import ConfigError
    from diffusion_curriculum.training.components import use_bf16

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert use_bf16("auto", cuda) is native and use_bf16("fp32", cuda) is False
    assert use_bf16("auto", cpu) is False and use_bf16("bf16", cpu) is True  # CPU autocast when asked
    if native:
        assert use_bf16("bf16", cuda) is True
    else:
        with pytest.raises(
            ConfigError,
            match="precision=bf16 needs a GPU that computes in bfloat16 natively, which "
            "Tesla V100 does not; use precision=fp32",
        ):
            use_bf16("bf16", cuda)


def test_cudnn_benchmark_is_a_resumable_setting():
    from diffusion_curriculum.training.state import fingerprint

    on, off = (config.resolve(overrides=[f"cudnn_benchmark={v}"]) for v in ("true", "false"))
    assert on["cudnn_benchmark"] is True and off["cudnn_benchmark"] is False
    assert fingerprint(on) == fingerprint(off)  # a speed knob: switching it on resume is allowed
