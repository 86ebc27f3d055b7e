"""The trainer's parts on their own: the state registry, the EMA, the denoising loss, the run directory and the
hooks."""

import json
import signal

import pytest
import torch
from torch import nn

from diffusion_curriculum import checkpoint
from diffusion_curriculum.ema import EMA
from diffusion_curriculum.loss import DenoisingLoss
from diffusion_curriculum.process import DiscreteProcess
from diffusion_curriculum.training import hooks, rundir
from diffusion_curriculum.training.state import Attributes, StateRegistry


class Counter:
    def __init__(self):
        self.n, self.h = 0, torch.zeros(3)


def test_registry_saves_parts_in_order_and_skips_absent_ones():
    lin = nn.Linear(2, 1)
    c = Counter()
    reg = StateRegistry()
    reg.register("model", lin)
    reg.register("momentum", None)
    reg.register("log", Attributes(c, "n", "h"), local=("h",))
    c.n, c.h = 5, torch.tensor([1.0, 2.0, 3.0])
    s = reg.state_dict()
    assert list(s) == ["model", "momentum", "log"] and s["momentum"] is None
    assert reg.local_state_dict().keys() == {"h"}
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("model", lin)

    c2 = Counter()
    other = StateRegistry()
    other.register("model", nn.Linear(2, 1))
    other.register("momentum", None)
    other.register("log", Attributes(c2, "n", "h"), local=("h",))
    # rank 1 takes the shared keys from the state and its own histogram from ranks/1
    other.load_state_dict({**s, "ranks": {"1": {"h": torch.tensor([7.0, 8.0, 9.0])}}}, rank=1)
    assert c2.n == 5 and isinstance(c2.n, int) and c2.h.tolist() == [7.0, 8.0, 9.0]
    other.load_state_dict(s)
    assert c2.h.tolist() == [1.0, 2.0, 3.0]


def test_ema_warms_up_and_round_trips():
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.9, warmup=10)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(10**6) == 0.9
    start = ema.model.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(0)
    assert torch.allclose(ema.model.weight, start + 0.9)  # 1 - decay_at(0) of the way
    assert not ema.model.weight.requires_grad and not ema.model.training
    other = EMA(nn.Linear(2, 2))
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.model.weight, ema.model.weight)


def test_loss_is_the_inline_formula():
    process = DiscreteProcess.linear(T=100)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.Unflatten(1, (1, 2, 2)))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 1, 2, 2, generator=g), torch.randn(3, 1, 2, 2, generator=g)
    t = torch.tensor([1, 50, 99])

    def fwd(x, tt):
        return net(x)

    loss = DenoisingLoss(process, "v", weight_fn=lambda tt: tt.float())
    x_t = process.add_noise(x0, noise, t)
    err = (fwd(x_t, t).float() - process.target(x0, noise, t, "v", x_t)).pow(2)
    assert torch.equal(loss.error(fwd, x0, noise, t), err.flatten(1).mean(1))
    assert torch.equal(loss.error(fwd, x0, noise, t, reduce="mean"), err.mean())
    per = err.flatten(1).mean(1)
    w = torch.tensor([1.0, 0.5, 2.0])
    assert torch.equal(loss.objective(t, per, w), (t.float() * w * per).mean())
    assert torch.equal(DenoisingLoss(process).objective(t, per, w), (w * per).mean())
    with pytest.raises(ValueError, match="reduce='sum' is not known"):
        loss.error(fwd, x0, noise, t, reduce="sum")


def test_rundir_refuses_a_run_and_truncates_metrics(tmp_path):
    rd = rundir.RunDir(tmp_path / "r")
    rd.prepare(resume=False)
    for step in (5, 10, 15):
        rd.append({"step": step, "loss": float(step)})
    with open(rd.metrics_path, "a") as f:
        f.write('{"step": 20, "lo')  # a torn last line
    with pytest.raises(ValueError, match="already holds a run"):
        rd.prepare(resume=False)
    rd.truncate_metrics(10)
    assert [json.loads(x)["step"] for x in rd.metrics_path.read_text().splitlines()] == [5, 10]
    assert rd.last_loss() == 10.0


def test_newest_usable_ema_falls_back(tmp_path):
    model = nn.Linear(2, 2)
    ck = tmp_path / "checkpoints"
    checkpoint.save(ck, 1, {"ema": model.state_dict()})
    checkpoint.save(ck, 2, {"ema": nn.Linear(3, 3).state_dict()})  # does not fit
    warnings = []
    path, step = rundir.load_newest_ema(model, checkpoint.list_checkpoints(ck), tmp_path, warnings.append)
    assert step == 1 and path.name == "step_00000001"
    assert len(warnings) == 1 and "trying the previous checkpoint" in warnings[0]
    with pytest.raises(checkpoint.CheckpointError, match="no usable checkpoint"):
        rundir.load_newest_ema(nn.Linear(5, 5), checkpoint.list_checkpoints(ck), tmp_path)


def test_noise_histogram_counts_and_restarts():
    h = hooks.NoiseHistogram(DiscreteProcess.linear(T=100), torch.device("cpu"), bins=4)
    h.on_step(None, torch.tensor([0, 24, 25, 99, 99]), torch.zeros(5))
    rec = h.record()
    assert rec["t_hist"] == [2, 1, 0, 2] and rec["t_hist_edges"] == [0, 25, 50, 75, 100]
    assert h.counts.sum() == 0


def test_interrupt_guard_counts_the_first_press_and_raises_on_the_second():
    before = signal.getsignal(signal.SIGINT)
    with hooks.InterruptGuard() as guard:
        signal.raise_signal(signal.SIGINT)
        assert guard.presses == 1
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_the_progress_bar_leaves_an_evaluation_out_of_its_eta(tmp_path, monkeypatch):
    """The bar's clock is moved past each evaluation, so its rate (and ETA) follow the training steps alone."""
    import time

    from conftest import TINY
    from diffusion_curriculum import config
    from diffusion_curriculum.train import Trainer
    from diffusion_curriculum.training import hooks

    starts = []
    real = hooks.ProgressBar.skip_pause

    def spy(self):
        before = self.bar.start_t
        real(self)
        starts.append(self.bar.start_t - before)

    monkeypatch.setattr(hooks.ProgressBar, "skip_pause", spy)
    tr = Trainer(config.resolve(overrides=[*TINY, "steps=6", "eval_every=3", "progress=true"]), tmp_path)
    real_eval = tr.evaluate

    def slow_eval():
        time.sleep(0.3)
        return real_eval()

    tr.evaluate = slow_eval
    tr.run()
    assert len(starts) == 2 and all(d >= 0.3 for d in starts)


def test_accumulated_micro_batches_equal_the_whole_batch_step(tmp_path):
    """accumulate=2 splits a step's batch of 32 into two backward passes of 16 on the same data, noise levels and
    noise (drawn for the whole batch): the per-sample losses and the gradients the optimizer gets are those of
    one pass, to float tolerance (Adam then amplifies float noise in near-zero gradients, so weights after
    several steps are not compared)."""
    import torch

    from conftest import TINY
    from diffusion_curriculum import config
    from diffusion_curriculum.train import Trainer

    got = {}
    for a in (1, 2):
        tr = Trainer(
            config.resolve(overrides=[*TINY, "batch_size=32", f"accumulate={a}"]), tmp_path / f"a{a}"
        )
        grads = []
        tr.optimizer.step = lambda tr=tr, grads=grads: grads.append(
            [p.grad.clone() for p in tr._model_params]
        )
        losses = tr.train_step()
        got[a] = (losses, grads[0])
    assert torch.allclose(got[1][0], got[2][0], rtol=1e-5, atol=1e-7)
    for g1, g2 in zip(got[1][1], got[2][1], strict=True):
        assert torch.allclose(g1, g2, rtol=1e-4, atol=1e-7)
    assert any(g.abs().max() > 1e-3 for g in got[1][1])  # real gradients, not zeros


def test_a_batch_that_the_micro_batches_do_not_divide_names_the_nearest_choices(tmp_path):
    import pytest

    from conftest import TINY
    from diffusion_curriculum import config
    from diffusion_curriculum.errors import ConfigError
    from diffusion_curriculum.train import Trainer

    with pytest.raises(
        ConfigError,
        match=r"batch_size=30 .* over the 1 processes x 4 accumulated micro-batches; "
        r"use a multiple of 4, the nearest being 28 or 32 \(7 or 8 per micro-batch\)",
    ):
        Trainer(config.resolve(overrides=[*TINY, "batch_size=30", "accumulate=4"]), tmp_path / "r")
