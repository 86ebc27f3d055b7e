"""Atomic, pickle-free checkpoints."""

import json
import os

import pytest
import torch

from conftest import same_state
from diffusion_curriculum import checkpoint


def _state():
    opt_state = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4)}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}],
    }
    return {
        "step": 5,
        "model": {"w": torch.randn(3, 3), "b": torch.zeros(3)},
        "opt": opt_state,
        "rng": torch.get_rng_state(),
        "py": (3, (1, 2, 3), None),
        "none": None,
        "name": "x",
        "f": float("inf"),
    }


def test_roundtrip_preserves_types(tmp_path):
    s = _state()
    path = checkpoint.save(tmp_path, 5, s)
    assert path.name == "step_00000005"
    step, back = checkpoint.load(path)
    assert step == 5
    assert torch.equal(back["model"]["w"], s["model"]["w"])
    assert list(back["opt"]["state"]) == [0]  # int keys survive
    assert back["opt"]["param_groups"][0]["betas"] == (0.9, 0.999)  # tuples survive
    assert back["py"] == (3, (1, 2, 3), None)
    assert torch.equal(back["rng"], s["rng"]) and back["f"] == float("inf")


def test_keep_last_k_and_newest_first(tmp_path):
    for st in (1, 2, 3, 4):
        checkpoint.save(tmp_path, st, {"x": torch.tensor(st)}, keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step_00000004", "step_00000003"]


def test_corruption_is_detected(tmp_path):
    path = checkpoint.save(tmp_path, 1, {"x": torch.randn(100)})
    data = bytearray((path / checkpoint.TENSORS).read_bytes())
    data[-5] ^= 0xFF
    (path / checkpoint.TENSORS).write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.load(path)
    (path / checkpoint.STATE).write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="unreadable"):
        checkpoint.load(path)
    os.remove(path / checkpoint.STATE)
    with pytest.raises(checkpoint.CheckpointError, match="incomplete"):
        checkpoint.load(path)


def test_failed_write_leaves_previous_intact_and_no_temp(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, 1, {"x": torch.ones(2)})

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", boom)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path, 2, {"x": torch.ones(2)})
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000001"]
    assert checkpoint.load(tmp_path / "step_00000001")[0] == 1


def test_temp_dirs_are_never_listed(tmp_path):
    (tmp_path / ".tmp-step_00000009-123").mkdir()
    (tmp_path / "step_00000009.partial").mkdir()
    assert checkpoint.list_checkpoints(tmp_path) == []


def test_a_pickle_is_never_loaded(tmp_path):
    """A crafted pickle placed as the tensor file is refused without running anything."""
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    d = tmp_path / "step_00000001"
    d.mkdir()
    payload = pickle.dumps(Evil())
    (d / checkpoint.TENSORS).write_bytes(payload)
    import hashlib

    (d / checkpoint.STATE).write_text(
        json.dumps({"format": 1, "step": 1, "sha256": hashlib.sha256(payload).hexdigest(), "state": {}})
    )
    with pytest.raises(checkpoint.CheckpointError, match="cannot be read"):
        checkpoint.load(d)
    assert not marker.exists()


def test_a_resume_reads_weights_and_optimizer_state_straight_onto_the_device(tmp_path, monkeypatch):
    """checkpoint.load(path, device): the model, EMA and optimizer tensors are opened on that device (no host
    copy), everything else (random streams, data stream, counters) on the CPU; with the CPU it is the plain load."""
    from conftest import TINY
    from diffusion_curriculum import config
    from diffusion_curriculum.train import Trainer

    Trainer(config.resolve(overrides=[*TINY, "steps=10"]), tmp_path / "r").run()
    ckpt = checkpoint.list_checkpoints(tmp_path / "r" / "checkpoints")[0]
    step, plain = checkpoint.load(ckpt)
    assert same_state(checkpoint.load(ckpt, "cpu")[1], plain)

    opened = []
    real = checkpoint.safe_open

    def recording(path, framework, device):
        opened.append(device)
        handle = real(path, framework=framework, device="cpu")  # no GPU here: read on the CPU, record the ask

        class Spy:
            def __enter__(self):
                self.f = handle.__enter__()
                return self

            def __exit__(self, *exc):
                return handle.__exit__(*exc)

            def keys(self):
                return self.f.keys()

            def get_tensor(self, k):
                requested.setdefault(device, []).append(k)
                return self.f.get_tensor(k)

        return Spy()

    requested: dict[str, list[str]] = {}
    monkeypatch.setattr(checkpoint, "safe_open", recording)
    _, state = checkpoint.load(ckpt, "cuda:0")
    assert opened == ["cpu", "cuda:0"] and same_state(state, plain)
    parts = {dev: {k.split(".")[1] for k in keys} for dev, keys in requested.items()}
    assert parts["cuda:0"] == {"model", "ema", "optimizer"}
    assert {"rng", "batcher"} <= parts["cpu"] and not parts["cpu"] & {"model", "ema", "optimizer"}
