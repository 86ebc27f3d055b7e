"""The drop-in use with diffusers and Accelerate: the examples/ scripts run, and the library agrees with both.

Each example runs as a subprocess on tiny settings; the in-process tests check that a diffusers scheduler's
``alphas_cumprod`` gives the same noising and SNR as diffusers itself, and that Accelerate's
``register_for_checkpointing`` + ``save_state`` / ``load_state`` restores the library's stateful objects exactly.
Everything skips cleanly when diffusers or accelerate is not installed (they are in the ``dev`` extra).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import same_state
from diffusion_curriculum import optim, timesteps, weighting
from diffusion_curriculum.process import DiscreteProcess, EDMProcess, FlowProcess

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DONE = re.compile(r"^done: steps=(\d+), final loss=([^\s,]+)", re.MULTILINE)


def run_example(script: str, *args: str, timeout: float = 120) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{script} exited with {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def check_done(out: str, steps: int) -> float:
    m = DONE.search(out)
    assert m, f"no 'done:' line in\n{out}"
    assert int(m.group(1)) == steps
    loss = float(m.group(2))
    assert math.isfinite(loss)
    return loss


# -- the examples, end to end ----------------------------------------------------------------------------------
def test_diffusers_example_runs():
    pytest.importorskip("diffusers")
    out = run_example(
        "diffusers_loop.py",
        *("--steps", "12", "--batch-size", "8", "--channels", "4", "--timesteps", "100"),
        *("--clusters", "4", "--max-steps-per-stage", "1", "--log-every", "4", "--mdlrc"),
    )
    check_done(out, 12)
    # a 1-step cap advances the curriculum at the first step it reads of each stage: the losses are read one
    # 4-step window late, and those drawn in an ended stage are not counted for the next one
    assert "'stage': 2" in out


def test_diffusers_conditional_example_runs():
    """A class-conditional UNet2DModel (num_class_embeds) trains with the unchanged timestep sampler and is
    sampled class-balanced with classifier-free guidance by the library's DDIM."""
    pytest.importorskip("diffusers")
    out = run_example(
        "diffusers_cond_loop.py",
        *("--steps", "4", "--batch-size", "8", "--channels", "4", "--timesteps", "100", "--log-every", "2"),
        *("--sampler", "ddc", "--samples", "10", "--sample-steps", "3", "--guidance", "2.5"),
    )
    check_done(out, 4)
    m = re.search(
        r"^generated 10 samples of classes \[0, 1, .*, 9\] at guidance 2.5, mean (\S+), std (\S+)$", out, re.M
    )
    assert m and math.isfinite(float(m.group(1))) and float(m.group(2)) > 0, out


@pytest.mark.parametrize(
    ("sampler", "weighting_name", "shift"), [("logit-normal", "cosmap", "3.0"), ("ddc", "none", "1.0")]
)
def test_flow_matching_example_runs(sampler, weighting_name, shift):
    pytest.importorskip("diffusers")
    out = run_example(
        "flow_matching_loop.py",
        *("--steps", "4", "--batch-size", "8", "--channels", "4", "--log-every", "2", "--sample-steps", "3"),
        *("--sampler", sampler, "--weighting", weighting_name, "--shift", shift),
    )
    check_done(out, 4)
    m = re.search(r"^generated 16 samples, mean (\S+), std (\S+)$", out, re.MULTILINE)
    assert m and math.isfinite(float(m.group(1))) and float(m.group(2)) > 0


@pytest.mark.parametrize("scheme", ["logit_normal", "loss-second-moment"])
def test_sd3_loop_example_runs_with_a_diffusers_scheme_and_a_library_strategy(scheme):
    pytest.importorskip("diffusers")
    out = run_example(
        "sd3_loop.py",
        *(
            "--steps",
            "4",
            "--batch-size",
            "8",
            "--channels",
            "4",
            "--log-every",
            "2",
            "--weighting-scheme",
            scheme,
        ),
    )
    check_done(out, 4)


def test_accelerate_example_resumes_exactly(tmp_path):
    pytest.importorskip("accelerate")
    out = run_example(
        "accelerate_loop.py",
        *("--steps", "6", "--batch-size", "16", "--hidden", "8", "--timesteps", "100"),
        *("--clusters", "3", "--max-steps-per-stage", "2", "--out", str(tmp_path / "ckpt")),
    )
    check_done(out, 6)
    saved = re.search(r"^saved at step 3 to .*: sampler (\{.*\})$", out, re.MULTILINE)
    restored = re.search(r"^restored sampler (\{.*\})$", out, re.MULTILINE)
    assert saved and restored, out
    assert saved.group(1) == restored.group(1)
    assert "sampler state round-trips: True" in out
    assert "resumed losses equal the uninterrupted run's: True" in out
    assert (tmp_path / "ckpt" / "custom_checkpoint_0.pkl").is_file()


def test_edm_example_runs():
    out = run_example(
        "edm_loop.py",
        *("--steps", "5", "--batch-size", "16", "--hidden", "8", "--depth", "1", "--log-every", "2"),
    )
    check_done(out, 5)
    assert "check: lambda(sigma)*|D - x0|^2 == |F - F_target|^2: True" in out


# -- diffusers agrees with the library -------------------------------------------------------------------------
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_from_alphas_cumprod_matches_diffusers(beta_schedule):
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDPMScheduler(beta_schedule=beta_schedule)
    process = DiscreteProcess.from_alphas_cumprod(scheduler.alphas_cumprod)
    assert process.T == scheduler.config.num_train_timesteps

    g = torch.Generator().manual_seed(0)
    t = torch.cat([torch.tensor([0, process.T - 1]), torch.randint(0, process.T, (62,), generator=g)])
    x0 = torch.randn(64, 3, 4, 4, generator=g)
    noise = torch.randn(64, 3, 4, 4, generator=g)
    ours = process.add_noise(x0, noise, t)
    theirs = scheduler.add_noise(x0, noise, t)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    v_theirs = scheduler.get_velocity(x0, noise, t)
    torch.testing.assert_close(process.target(x0, noise, t, "v"), v_theirs, rtol=1e-5, atol=1e-6)


def test_snr_and_min_snr_match_diffusers_training_scripts():
    pytest.importorskip("diffusers")
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    scheduler = DDPMScheduler()
    process = DiscreteProcess.from_alphas_cumprod(scheduler.alphas_cumprod)
    t = torch.arange(process.T)
    snr = compute_snr(scheduler, t)
    torch.testing.assert_close(process.snr(t), snr, rtol=1e-4, atol=0)
    # diffusers' train_text_to_image.py: min(SNR, γ)/SNR (ε) and min(SNR, γ)/(SNR + 1) (v-prediction)
    clipped = torch.stack([snr, 5.0 * torch.ones_like(snr)], dim=1).min(dim=1)[0]
    torch.testing.assert_close(
        weighting.build("min-snr", process, "eps")(t), clipped / snr, rtol=1e-4, atol=0
    )
    torch.testing.assert_close(
        weighting.build("min-snr", process, "v")(t), clipped / (snr + 1), rtol=1e-4, atol=0
    )


# -- Accelerate checkpoints the library's objects --------------------------------------------------------------
@pytest.fixture
def fresh_accelerate_state():
    pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _ddc(process):
    return timesteps.build("ddc", process, total_steps=1000, clusters=5, max_steps_per_stage=3)


def test_accelerate_restores_ddc_mid_curriculum(tmp_path, fresh_accelerate_state):
    from accelerate import Accelerator

    process = DiscreteProcess.linear(T=100)
    model = torch.nn.Linear(2, 2)
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(model, torch.optim.Adam(model.parameters()))
    momentum = optim.MomentumDecay(optimizer, total_steps=50)
    sampler = _ddc(process)
    accelerator.register_for_checkpointing(sampler, momentum)

    torch.manual_seed(0)
    # a flat loss: each stage lasts its cap of 3 steps read (judged after 2 windows of 5); the losses are read one
    # 4-step observation window late, and those drawn in a stage that has ended are not counted
    for _ in range(16):
        draw = sampler.sample(8)
        optimizer.step()
        momentum.step()
        sampler.observe(draw.t, torch.ones(8))
    assert sampler.status()["stage"] == 3 and sampler.status()["phase"] == "curriculum"
    accelerator.save_state(str(tmp_path))
    saved, saved_momentum = sampler.state_dict(), momentum.state_dict()
    expected = []
    for _ in range(5):  # the next draws, with the stage advancing on the way
        draw = sampler.sample(8)  # torch's global RNG, which Accelerate saves and restores
        expected.append(draw.t)
        sampler.observe(draw.t, torch.ones(8))

    accelerator2 = Accelerator(cpu=True)
    model2 = torch.nn.Linear(2, 2)
    model2, optimizer2 = accelerator2.prepare(model2, torch.optim.Adam(model2.parameters()))
    momentum2 = optim.MomentumDecay(optimizer2, total_steps=50)
    sampler2 = _ddc(process)
    assert not same_state(sampler2.state_dict(), saved)
    accelerator2.register_for_checkpointing(sampler2, momentum2)
    torch.manual_seed(123)  # load_state must bring back the RNG too
    accelerator2.load_state(str(tmp_path))
    assert same_state(sampler2.state_dict(), saved)
    assert momentum2.state_dict() == saved_momentum
    assert optimizer2.param_groups[0]["betas"][0] == pytest.approx(momentum.beta1(16))
    for t in expected:
        draw = sampler2.sample(8)
        assert torch.equal(draw.t, t)
        sampler2.observe(draw.t, torch.ones(8))
    assert same_state(sampler2.state_dict(), sampler.state_dict())


SAMPLER_CASES = (
    [(n, "discrete") for n in timesteps.names()]
    + [(n, "continuous") for n in timesteps.names() if "continuous" in timesteps.REGISTRY[n].supports]
    + [(n, "flow") for n in timesteps.names() if "flow" in timesteps.REGISTRY[n].supports]
)


@pytest.mark.parametrize(("name", "kind"), SAMPLER_CASES)
def test_every_sampler_is_an_accelerate_custom_object(tmp_path, name, kind, fresh_accelerate_state):
    """Every registered sampler goes through register_for_checkpointing + save_state / load_state unchanged and
    continues identically; the saved file also loads with ``weights_only=True`` (plain values only)."""
    from accelerate import Accelerator

    process = {
        "discrete": DiscreteProcess.linear(T=100),
        "continuous": EDMProcess(),
        "flow": FlowProcess(shift=3),
    }[kind]
    params = {"history": 2} if name == "loss-second-moment" else {}
    if name == "loss-second-moment" and kind == "flow":
        params["buckets"] = 8
    sampler = timesteps.build(name, process, total_steps=40, **params)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):  # enough for importance histories to fill
        draw = sampler.sample(16, generator=g)
        sampler.observe(draw.t, torch.rand(16, generator=g) + draw.t.float() / 100)
    accelerator = Accelerator(cpu=True)
    accelerator.register_for_checkpointing(sampler)
    accelerator.save_state(str(tmp_path))
    torch.load(tmp_path / "custom_checkpoint_0.pkl", weights_only=True)

    fresh = timesteps.build(name, process, total_steps=40, **params)
    accelerator = Accelerator(cpu=True)
    accelerator.register_for_checkpointing(fresh)
    accelerator.load_state(str(tmp_path))
    assert same_state(fresh.state_dict(), sampler.state_dict())
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    for _ in range(3):
        a, b = sampler.sample(16, generator=g1), fresh.sample(16, generator=g2)
        assert torch.equal(a.t, b.t) and torch.equal(a.weight, b.weight)
        sampler.observe(a.t, torch.ones(16))
        fresh.observe(b.t, torch.ones(16))
