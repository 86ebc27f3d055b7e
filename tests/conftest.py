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
