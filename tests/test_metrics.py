"""Tests of diffusion_curriculum.metrics: Fréchet distance, feature nets and their cache, Inception FID
(random weights), precision/recall, sliced Wasserstein, MMD and the Evaluator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from diffusion_curriculum import data, metrics


def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("feature_cache")


@pytest.fixture(scope="module")
def digits_net(digits, cache):
    return metrics.feature_net(digits, seed=0, cache_dir=cache)


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """A randomly initialised FID Inception-v3 (He init, so the features are not vanishingly small)."""
    net = metrics.FIDInceptionV3()
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=g)
    path = tmp_path_factory.mktemp("inception") / "random_inception.pth"
    torch.save(net.state_dict(), path)
    return path


# -- Fréchet distance ----------------------------------------------------------------------------------
def test_fd_of_a_set_with_itself_is_zero():
    f = _randn(400, 32)
    assert abs(metrics.frechet_distance(f, f)) < 1e-6
    few = _randn(10, 64, seed=1)  # fewer samples than dimensions: the low-rank path
    assert abs(metrics.frechet_distance(few, few)) < 1e-6


def _white(n, d, seed):
    """Samples with exactly zero mean and identity covariance, so the Gaussian formulas hold exactly."""
    z = _randn(n, d, seed=seed)
    z = z - z.mean(0)
    chol = torch.linalg.cholesky(z.T @ z / (n - 1))
    return torch.linalg.solve_triangular(chol, z.T, upper=False).T


def test_fd_matches_closed_form_for_gaussians():
    d, n = 4, 500
    mu = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    a, b = _white(n, d, 1), _white(n, d, 2) + mu
    # N(0, I) vs N(μ, I): FD = ‖μ‖²
    assert metrics.frechet_distance(a, b) == pytest.approx(float(mu @ mu), abs=1e-8)
    # N(0, s1² I) vs N(0, s2² I): FD = d (s1 − s2)²
    s1, s2 = 1.0, 2.0
    assert metrics.frechet_distance(s1 * a, s2 * _white(n, d, 3)) == pytest.approx(
        d * (s1 - s2) ** 2, abs=1e-8
    )
    # and for independent draws (not whitened) up to sampling error
    x, y = _randn(20_000, d, seed=4), _randn(20_000, d, seed=5) + mu
    assert metrics.frechet_distance(x, y) == pytest.approx(float(mu @ mu), abs=0.2)
    # numpy input works too
    assert metrics.frechet_distance(a.numpy(), b.numpy()) == pytest.approx(metrics.frechet_distance(a, b))


def test_fd_low_rank_path_matches_eigenvalue_formula():
    a, b = _randn(10, 16, seed=5), _randn(12, 16, seed=6) * 1.5 + 0.3
    an, bn = a.numpy(), b.numpy()
    sa, sb = np.cov(an, rowvar=False), np.cov(bn, rowvar=False)
    eig = np.clip(np.linalg.eigvals(sa @ sb).real, 0, None)
    diff = an.mean(0) - bn.mean(0)
    expected = diff @ diff + np.trace(sa) + np.trace(sb) - 2 * np.sqrt(eig).sum()
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_fd_rejects_mismatched_features():
    with pytest.raises(ValueError, match="feature dimensions differ"):
        metrics.frechet_distance(_randn(10, 3), _randn(10, 4))
    assert math.isnan(metrics.frechet_distance(torch.full((5, 2), float("nan")), _randn(5, 2)))


# -- feature nets --------------------------------------------------------------------------------------
def test_classifier_is_accurate_on_held_out_digits(digits_net):
    assert isinstance(digits_net, metrics.FeatureNet)
    assert digits_net.kind == "classifier"
    assert digits_net.accuracy > 0.9
    assert digits_net.feature_dim == 128


def test_fd_grows_with_noise_on_classifier_features(digits, digits_net):
    real = metrics.extract_features(digits_net, digits.data)
    g = torch.Generator().manual_seed(1)
    fds = []
    for sigma in (0.1, 0.3, 0.6):
        noisy = (digits.data + sigma * torch.randn(digits.data.shape, generator=g)).clamp(-1, 1)
        fds.append(metrics.frechet_distance(metrics.extract_features(digits_net, noisy), real))
    assert 0 < fds[0] < fds[1] < fds[2]


def test_training_is_deterministic(digits):
    a = metrics.train_feature_net(digits, seed=3, steps=15)
    b = metrics.train_feature_net(digits, seed=3, steps=15)
    c = metrics.train_feature_net(digits, seed=4, steps=15)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_feature_net_is_cached_on_disk_and_in_memory(digits, tmp_path, monkeypatch):
    metrics.clear_memo()
    first = metrics.feature_net(digits, seed=5, cache_dir=tmp_path, steps=15)
    assert first.source == "trained"
    files = sorted(p.name for p in (tmp_path / "feature_nets").iterdir())
    assert [f.rsplit(".", 1)[1] for f in files] == ["json", "safetensors"]
    assert metrics.feature_net(digits, seed=5, cache_dir=tmp_path, steps=15) is first  # in-process memo

    def no_training(*args, **kwargs):
        raise AssertionError("the feature net was retrained although it is cached")

    monkeypatch.setattr(metrics.feature_nets, "train_feature_net", no_training)
    metrics.clear_memo()
    loaded = metrics.feature_net(digits, seed=5, cache_dir=tmp_path, steps=15)
    assert loaded.source == "cache"
    assert loaded.accuracy == pytest.approx(first.accuracy)
    assert all(torch.equal(v, first.state_dict()[k]) for k, v in loaded.state_dict().items())
    x = digits.data[:20]
    assert torch.equal(metrics.extract_features(loaded, x), metrics.extract_features(first, x))
    # other labels, seed or settings are other cache entries (and would need training)
    relabelled = data.Dataset(digits.data, (digits.labels + 1) % 10, "digits", "image")
    for ds, seed, steps in ((relabelled, 5, 15), (digits, 6, 15), (digits, 5, 16)):
        with pytest.raises(AssertionError, match="retrained"):
            metrics.feature_net(ds, seed=seed, cache_dir=tmp_path, steps=steps)


def test_unlabelled_images_use_the_autoencoder(digits, tmp_path):
    unlabelled = data.Dataset(digits.data, None, "unlabelled", "image")
    net = metrics.feature_net(unlabelled, seed=0, cache_dir=tmp_path, steps=60)
    assert isinstance(net, metrics.AutoEncoder) and net.kind == "autoencoder"
    assert net.recon_mse < float(digits.data.var())  # it learned something
    assert metrics.extract_features(net, digits.data[:7]).shape == (7, net.feature_dim)
    ev = metrics.Evaluator(unlabelled, cache_dir=tmp_path, feature_settings={"steps": 60})
    assert ev.fd_features == "autoencoder"
    assert set(ev(digits.data[:200])) == {"fd", "precision", "recall"}


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28), (4, 8, 8)])
def test_feature_nets_take_other_image_sizes(shape):
    x = torch.rand(5, *shape) * 2 - 1
    assert metrics.FeatureNet(shape, 10).features(x).shape == (5, 128)
    ae = metrics.AutoEncoder(shape)
    assert ae(x).shape == x.shape and ae.features(x).shape == (5, 64)


def test_feature_net_rejects_points_and_bad_settings(digits):
    points = data.load("8gaussians", n=100)
    with pytest.raises(ValueError, match="feature nets work on images"):
        metrics.feature_net(points)
    with pytest.raises(ValueError, match="unknown feature-net setting"):
        metrics.train_feature_net(digits, stepz=3)


# -- Inception -----------------------------------------------------------------------------------------
def test_inception_fid_runs_with_a_local_weights_file(digits, inception_file):
    fake, real = digits.data[:6], digits.data[100:106]
    fid = metrics.inception_fid(fake, real, inception_file, batch_size=4)
    assert math.isfinite(fid) and fid > 0
    net = metrics.load_inception(inception_file)
    feats = metrics.inception_features(fake, net, batch_size=6)
    assert feats.shape == (6, 2048)
    assert abs(metrics.frechet_distance(feats, feats)) < 1e-6 * max(1.0, float(feats.var(0).sum()))


def test_inception_weights_in_safetensors(inception_file, tmp_path):
    state = torch.load(inception_file, map_location="cpu", weights_only=True)
    path = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    net = metrics.load_inception(path)
    assert torch.equal(net.Mixed_7c.branch_pool.conv.weight, state["Mixed_7c.branch_pool.conv.weight"])


def test_missing_inception_weights_say_how_to_get_them(tmp_path):
    with pytest.raises(ValueError, match=r"inception_weights is not set: download pt_inception-2015-12-05"):
        metrics.inception_fid(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8), None)
    with pytest.raises(ValueError, match="does not exist: download pt_inception"):
        metrics.load_inception(tmp_path / "nope.pth")


def test_wrong_inception_state_dicts_give_clear_errors(inception_file, tmp_path):
    wrong_keys = tmp_path / "wrong_keys.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, wrong_keys)
    with pytest.raises(ValueError, match="is not the FID Inception-v3 state_dict: .* missing .* unexpected"):
        metrics.load_inception(wrong_keys)
    state = torch.load(inception_file, map_location="cpu", weights_only=True)
    state["Mixed_5b.branch1x1.conv.weight"] = torch.zeros(64, 192, 3, 3)
    wrong_shape = tmp_path / "wrong_shape.pth"
    torch.save(state, wrong_shape)
    with pytest.raises(ValueError, match=r"Mixed_5b.branch1x1.conv.weight of shape \(64, 192, 3, 3\)"):
        metrics.load_inception(wrong_shape)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read as a state_dict"):
        metrics.load_inception(garbage)


# -- precision / recall --------------------------------------------------------------------------------
def test_precision_recall_identical_and_shifted():
    real = _randn(400, 8, dtype=torch.float32)
    assert metrics.precision_recall(real, real.clone()) == (1.0, 1.0)
    p, r = metrics.precision_recall(real, real + 3.0, chunk_size=64)
    assert p < 0.3 and r < 0.3
    # a fake set covering only part of the real one: high precision, lower recall
    part = real[real[:, 0] > 0]
    p, r = metrics.precision_recall(real, part)
    assert p == 1.0 and r < 0.8


def test_knn_radii_excludes_the_point_itself():
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    assert torch.allclose(metrics.knn_radii(x, k=1), torch.tensor([1.0, 1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="k=4"):
        metrics.knn_radii(x, k=4)


# -- points --------------------------------------------------------------------------------------------
def test_sliced_wasserstein_and_mmd_grow_with_a_shift():
    x, y = _randn(1000, 2, seed=1), _randn(800, 2, seed=2)  # unequal sizes
    swd = [metrics.sliced_wasserstein(x, y + s) for s in (0.0, 0.5, 1.0, 2.0)]
    mmd = [metrics.mmd(x, y + s) for s in (0.0, 0.5, 1.0, 2.0)]
    assert swd[0] < 0.2 * swd[1] and swd[1] < swd[2] < swd[3]
    assert abs(mmd[0]) < 0.05 * mmd[1] and mmd[1] < mmd[2] < mmd[3]


def test_sliced_wasserstein_of_a_translation():
    # moving every point by δ moves each projection by θ·δ, so SW2 = sqrt(E (θ·δ)²) = |δ| / sqrt(2) in 2-D
    x = _randn(500, 2, seed=3)
    delta = torch.tensor([1.0, 1.0], dtype=torch.float64)
    sw = metrics.sliced_wasserstein(x, x + delta, n_projections=2000)
    assert sw == pytest.approx(float(delta.norm()) / math.sqrt(2), rel=0.03)
    assert metrics.sliced_wasserstein(x, x + delta) == metrics.sliced_wasserstein(x, x + delta)  # seeded


# -- Evaluator -----------------------------------------------------------------------------------------
def test_evaluator_on_digits(digits, digits_net, cache):
    ev = metrics.Evaluator(digits, cache_dir=cache)
    assert ev.fd_features == "classifier"
    assert all(torch.equal(v, digits_net.state_dict()[k]) for k, v in ev.feature_net.state_dict().items())
    same = ev(digits.data[:1000])
    assert set(same) == {"fd", "precision", "recall"}
    assert all(isinstance(v, float) for v in same.values())
    assert same["precision"] == 1.0
    g = torch.Generator().manual_seed(0)
    noise = (digits.data[:1000] + 0.5 * torch.randn(1000, 1, 8, 8, generator=g)).clamp(-1, 1)
    worse = ev(noise)
    assert worse["fd"] > same["fd"] and worse["precision"] < same["precision"]
    nan = ev(torch.full((10, 1, 8, 8), float("nan")))
    assert set(nan) == set(same) and all(math.isnan(v) for v in nan.values())
    with pytest.raises(ValueError, match="needs at least 2 samples of shape"):
        ev(torch.zeros(10, 1, 16, 16))


def test_evaluator_reports_fid_with_inception_weights(digits, cache, inception_file):
    ev = metrics.Evaluator(digits, cache_dir=cache, n_real=6, inception_weights=inception_file)
    out = ev(digits.data[500:506])
    assert set(out) == {"fd", "precision", "recall", "fid"} and math.isfinite(out["fid"])


def test_evaluator_on_8gaussians():
    train = data.load("8gaussians", n=2000, seed=0)
    ev = metrics.Evaluator(train, n_real=2000)
    assert not torch.equal(ev.real_points.float(), train.data)  # a fresh draw, not the training points
    good = ev(data.toy_points("8gaussians", 1000, seed=7)[0])
    bad = ev(data.toy_points("8gaussians", 1000, seed=7)[0] * 1.5)
    assert set(good) == {"swd", "mmd"}
    assert good["swd"] < bad["swd"] and good["mmd"] < bad["mmd"]
    assert abs(good["mmd"]) < 0.01
