import atexit
import os
import shutil
import tempfile

import pytest
import torch

# Feature nets for the metrics are cached on disk; keep the tests' cache out of the user's home (subprocesses
# started by the tests inherit this).
if "DIFFUSION_CURRICULUM_CACHE" not in os.environ:
    os.environ["DIFFUSION_CURRICULUM_CACHE"] = tempfile.mkdtemp(prefix="dc-test-cache-")
    atexit.register(shutil.rmtree, os.environ["DIFFUSION_CURRICULUM_CACHE"], ignore_errors=True)

# Small, fast settings shared by the trainer and CLI tests (an 8x8 digits UNet with 8 channels).
TINY = [
    "steps=30",
    "batch_size=16",
    "model.channels=8",
    "model.groups=8",
    "model.attention_resolutions=[4]",
    "eval.samples=8",
    "eval.steps=4",
    "eval_every=0",
    "checkpoint_every=10",
    "log_every=5",
    "progress=false",
    "metrics.enabled=false",
]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    yield


def run_gloo_ranks(body, world: int = 2) -> list:
    """Run ``body(rank, world) -> result`` in ``world`` forked CPU processes joined in one gloo process group;
    return the results in rank order. Forked (not spawned) workers keep a test well under a second; skips
    where torch.distributed or the fork start method is missing."""
    import socket

    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or "fork" not in mp.get_all_start_methods():
        pytest.skip("needs torch.distributed and the fork start method")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    def worker(rank, q):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=world)
        try:
            q.put((rank, body(rank, world)))
        finally:
            dist.destroy_process_group()

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, q)) for r in range(world)]
    for pr in procs:
        pr.start()
    try:
        res = sorted((q.get(timeout=60) for _ in procs), key=lambda x: x[0])
    finally:
        for pr in procs:
            pr.join(timeout=30)
            if pr.is_alive():
                pr.terminate()
    return [r for _, r in res]


def train_until_interrupted(cfg, run_dir, at_step: int) -> None:
    """Train ``cfg`` in ``run_dir`` and press Ctrl-C right after step ``at_step`` (the trainer saves a
    checkpoint there and re-raises), as a test of resuming needs."""
    from diffusion_curriculum.train import Trainer

    t = Trainer(cfg, run_dir)
    real_step = t.train_step

    def step_then_interrupt():
        out = real_step()
        if t.step == at_step:
            raise KeyboardInterrupt
        return out

    t.train_step = step_then_interrupt
    with pytest.raises(KeyboardInterrupt):
        t.run()


@pytest.fixture
def immediate_observations(monkeypatch):
    """Samplers apply each observation at once (window 1, lag 0): for tests of what a sampler decides from its
    losses, apart from when it reads them (the lag has tests of its own in test_device_contract)."""
    from diffusion_curriculum.timesteps import observations

    monkeypatch.setattr(observations, "WINDOW", 1)
    monkeypatch.setattr(observations, "LAG", 0)


def same_state(a, b) -> bool:
    """Whether two nested states (mappings, lists, tensors, numbers) are equal to the bit; NaN equals NaN."""
    import math

    import torch

    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return (
            isinstance(b, (list, tuple)) and len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
        )
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b
