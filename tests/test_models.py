"""Tests for diffusion_curriculum.models: shapes, training signal, time conditioning, determinism, autocast and
the errors build() gives for bad configuration."""

from __future__ import annotations

import pytest
import torch

from diffusion_curriculum import models

# Tiny configurations, one per supported data shape, so the whole file runs in seconds on a laptop CPU.
TINY = {
    "mlp-2d": ("mlp", (2,), dict(hidden=32, depth=2, time_dim=16)),
    "unet-1x8x8": (
        "unet",
        (1, 8, 8),
        dict(channels=16, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[4], groups=8),
    ),
    "unet-1x28x28": (
        "unet",
        (1, 28, 28),
        dict(
            channels=8,
            channel_mult=(1, 2, 2),
            num_res_blocks=1,
            attention_resolutions=(7,),
            num_heads=2,
            groups=4,
        ),
    ),
    "unet-3x32x32": (
        "unet",
        (3, 32, 32),
        dict(channels=8, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[16], groups=8),
    ),
    "dit-3x32x32": ("dit", (3, 32, 32), dict(patch_size=4, depth=2, hidden=32, heads=2)),
}
IDS = list(TINY)

DISCRETE_T = torch.tensor([0.0, 500.0, 999.0])  # timestep indices as floats
C_NOISE_T = torch.tensor([-2.0, -0.3, 1.2])  # EDM's c_noise = ln(σ)/4


def build(key: str, seed: int = 0) -> torch.nn.Module:
    name, shape, params = TINY[key]
    torch.manual_seed(seed)
    return models.build(name, shape, **params)


def batch(key: str, seed: int = 1) -> torch.Tensor:
    shape = TINY[key][1]
    return torch.randn(3, *shape, generator=torch.Generator().manual_seed(seed))


def perturb_zero_init(model: torch.nn.Module) -> None:
    """Give the zero-initialised layers (output layers, adaLN-Zero) small random values, as training would."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            if torch.all(p == 0):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("key", IDS)
@pytest.mark.parametrize("t", [DISCRETE_T, C_NOISE_T], ids=["discrete", "c_noise"])
def test_forward_keeps_shape_for_both_time_conventions(key, t):
    model = build(key)
    perturb_zero_init(model)
    x = batch(key)
    out = model(x, t)
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("key", IDS)
def test_output_starts_at_zero(key):
    # Zero-initialised output layers (ADM, DiT's adaLN-Zero): the untrained model predicts 0 everywhere.
    model = build(key)
    assert torch.count_nonzero(model(batch(key), DISCRETE_T)) == 0


@pytest.mark.parametrize("key", IDS)
def test_loss_goes_down_on_a_fixed_regression_target(key):
    # With zero-initialised output layers only the last layer gets gradient at first, so instead of checking
    # every parameter's gradient, check that a few Adam steps actually fit a fixed target.
    model = build(key)
    x = batch(key)
    target = batch(key, seed=2)
    t = DISCRETE_T
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = (model(x, t) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    # After training, every parameter has been reached by the gradient.
    loss = (model(x, t) - target).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or torch.count_nonzero(p.grad) == 0]
    assert no_grad == []


@pytest.mark.parametrize("key", IDS)
def test_time_changes_the_output(key):
    model = build(key)
    perturb_zero_init(model)
    x = batch(key)
    ones = torch.ones(3)
    with torch.no_grad():
        assert not torch.allclose(model(x, 10 * ones), model(x, 900 * ones), atol=1e-5)
        assert not torch.allclose(model(x, -1.5 * ones), model(x, 0.5 * ones), atol=1e-5)


@pytest.mark.parametrize("key", IDS)
def test_same_seed_gives_identical_models(key):
    a, b = build(key, seed=0), build(key, seed=0)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = build(key, seed=1)
    assert any(not torch.equal(sa[k], c.state_dict()[k]) for k in sa)


@pytest.mark.parametrize("key", IDS)
def test_bf16_autocast_forward_on_cpu(key):
    model = build(key)
    perturb_zero_init(model)
    x = batch(key)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, C_NOISE_T)
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    assert torch.isfinite(out).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("key", IDS)
def test_cuda_forward_matches_cpu(key):
    model = build(key)
    perturb_zero_init(model)
    x = batch(key)
    with torch.no_grad():
        expected = model(x, DISCRETE_T)
        out = model.cuda()(x.cuda(), DISCRETE_T.cuda())
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out_bf16 = model(x.cuda(), C_NOISE_T.cuda())
    assert torch.allclose(out.cpu(), expected, atol=1e-3, rtol=1e-3)
    assert out_bf16.shape == x.shape and out_bf16.dtype == x.dtype and torch.isfinite(out_bf16).all()


def test_scalar_time_is_broadcast_and_long_time_accepted():
    model = build("unet-1x8x8")
    perturb_zero_init(model)
    x = batch("unet-1x8x8")
    with torch.no_grad():
        expected = model(x, torch.full((3,), 7.0))
        assert torch.allclose(model(x, torch.tensor(7.0)), expected)
        assert torch.allclose(model(x, torch.full((3,), 7, dtype=torch.long)), expected)


def test_bad_inputs_to_forward_raise():
    model = build("mlp-2d")
    with pytest.raises(ValueError, match="shape"):
        model(torch.randn(3, 2), torch.zeros(4))
    with pytest.raises(ValueError, match=r"\(2,\)"):
        model(torch.randn(3, 3), torch.zeros(3))


def test_dropout_and_train_mode():
    for key in ("mlp-2d", "unet-1x8x8", "dit-3x32x32"):
        name, shape, params = TINY[key]
        model = models.build(name, shape, **{**params, "dropout": 0.1}).train()
        perturb_zero_init(model)
        assert model(batch(key), DISCRETE_T).shape == batch(key).shape


def test_odd_sizes_come_back_exactly():
    # 7 -> 4 -> 7 and 5 -> 3 -> 2 -> 3 -> 5: the upsampler interpolates to the skip's size.
    for shape, mult in [((1, 7, 7), [1, 1]), ((2, 5, 6), [1, 1, 1])]:
        model = models.build("unet", shape, channels=4, channel_mult=mult, num_res_blocks=1, groups=4)
        x = torch.randn(2, *shape)
        assert model(x, torch.zeros(2)).shape == x.shape


def test_defaults_build_and_parameter_counts():
    mlp = models.build("mlp", (2,))
    assert 150_000 < models.count_parameters(mlp) < 500_000
    assert models.count_parameters(mlp) == sum(p.numel() for p in mlp.parameters())
    unet = models.build("unet", (1, 28, 28))  # default attention: the 16x16 level if there is one (none here)
    assert unet(torch.randn(1, 1, 28, 28), torch.zeros(1)).shape == (1, 1, 28, 28)
    assert models.defaults("dit")["size"] == "S"
    assert set(models.defaults("unet")) >= {"channels", "channel_mult", "groups", "attention_resolutions"}


def test_dit_sizes_follow_the_paper_table():
    torch.manual_seed(0)
    small = models.build("dit", (3, 32, 32), size="S", patch_size=4)
    assert len(small.blocks) == 12
    assert small.pos_embed.shape == (1, 64, 384)
    assert small.blocks[0].attn.heads == 6
    base = models.build("dit", (3, 32, 32), size="B", patch_size=4, depth=1)  # override depth, keep width
    assert len(base.blocks) == 1 and base.pos_embed.shape[-1] == 768 and base.blocks[0].attn.heads == 12


def test_list_and_tuple_parameters_are_equivalent():
    a = build("unet-1x8x8")
    name, shape, params = TINY["unet-1x8x8"]
    torch.manual_seed(0)
    b = models.build(name, list(shape), **{**params, "channel_mult": (1, 2), "attention_resolutions": (4,)})
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


# ------------------------------------------------------------------------------------------------------------
# build() errors: one ValueError naming the parameter.

UNET_8 = dict(channels=16, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[4], groups=8)


@pytest.mark.parametrize(
    "name, shape, params, expected",
    [
        ("foo", (2,), {}, r"model.name='foo' is not known; allowed: mlp, unet, dit"),
        ("unet", (1, 8, 8), dict(chanels=3), r"model\.chanels.*did you mean 'channels'"),
        ("dit", (3, 8, 8), dict(patchsize=2), r"model\.patchsize.*did you mean 'patch_size'"),
        ("mlp", (2,), dict(zzz=1), r"model\.zzz.*allowed: hidden, depth, time_dim, dropout"),
        ("unet", (1, 8, 8), {**UNET_8, "channels": -4}, r"model\.channels=-4"),
        ("unet", (1, 8, 8), {**UNET_8, "channels": True}, r"model\.channels=True"),
        ("unet", (1, 8, 8), {**UNET_8, "channels": "16"}, r"model\.channels='16'"),
        ("unet", (1, 8, 8), {**UNET_8, "channels": 16.0}, r"model\.channels=16\.0"),
        ("unet", (1, 8, 8), {**UNET_8, "groups": 5}, r"model\.groups=5.*e\.g\. model\.groups=4"),
        ("unet", (1, 8, 8), {**UNET_8, "channels": 48, "groups": 32}, r"model\.groups=32.*model\.groups=24"),
        ("unet", (1, 8, 8), {**UNET_8, "channel_mult": [1, 2, 2, 2]}, r"model\.channel_mult=.*at most 3"),
        ("unet", (1, 8, 8), {**UNET_8, "channel_mult": []}, r"model\.channel_mult=\[\]"),
        ("unet", (1, 8, 8), {**UNET_8, "channel_mult": [1, 0]}, r"model\.channel_mult"),
        ("unet", (1, 8, 8), {**UNET_8, "attention_resolutions": [16]}, r"model\.attention_resolutions.*8, 4"),
        ("unet", (1, 8, 8), {**UNET_8, "attention_resolutions": 4}, r"model\.attention_resolutions=4"),
        ("unet", (1, 8, 8), {**UNET_8, "num_heads": 3}, r"model\.num_heads=3"),
        (  # the user's channels make the attention width, so they are named first, with a fitting value
            "unet",
            (1, 8, 8),
            {
                **UNET_8,
                "channels": 15,
                "channel_mult": [1, 2],
                "attention_resolutions": [4],
                "num_heads": 4,
                "groups": 1,
            },
            r"model\.channels=15 gives 30 channels.*model\.num_heads=4.*use model\.channels=16",
        ),
        ("unet", (1, 8, 8), {**UNET_8, "dropout": 1.0}, r"model\.dropout=1\.0"),
        ("unet", (1, 8, 8), {**UNET_8, "num_res_blocks": 0}, r"model\.num_res_blocks=0"),
        ("unet", (2,), {}, r"model\.name='unet' is for images.*data_shape=\(2,\)"),
        ("dit", (2,), {}, r"model\.name='dit' is for images"),
        ("mlp", (1, 8, 8), {}, r"model\.name='mlp' is for points.*data_shape=\(1, 8, 8\)"),
        ("mlp", (-2,), {}, r"data_shape=\(-2,\)"),
        ("mlp", (2,), dict(hidden=0), r"model\.hidden=0"),
        ("mlp", (2,), dict(depth=False), r"model\.depth=False"),
        ("mlp", (2,), dict(dropout=-0.1), r"model\.dropout=-0\.1"),
        ("dit", (3, 32, 32), dict(patch_size=3), r"model\.patch_size=3.*allowed: 1, 2, 4, 8, 16, 32"),
        ("dit", (3, 32, 32), dict(size="M"), r"model\.size='M'.*S, B, L, XL"),
        ("dit", (3, 32, 32), dict(hidden=64, heads=3), r"model\.heads=3"),
        ("dit", (3, 32, 32), dict(hidden=66, heads=2), r"model\.hidden=66"),
        ("dit", (3, 32, 32), dict(depth=-1), r"model\.depth=-1"),
        ("dit", (3, 32, 32), dict(mlp_ratio=0), r"model\.mlp_ratio=0"),
    ],
)
def test_build_errors_name_the_parameter(name, shape, params, expected):
    with pytest.raises(ValueError, match=expected):
        models.build(name, shape, **params)


@pytest.mark.parametrize("size", [8, 16, 32])
def test_the_default_model_fits_a_folder_of_any_image_size(tmp_path, size):
    """A folder of 16x16 PNGs (or dataset.size=32) used to fail with the default model: "model.
    attention_resolutions=[4] is not allowed ... for this 16x16 image". The default (auto) now puts attention
    at the lowest resolution the U-Net reaches, which for the 8x8 digits is the [4] it always was."""
    from PIL import Image

    from diffusion_curriculum import config
    from diffusion_curriculum.training import build_components

    for i in range(3):
        Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(tmp_path / f"{i}.png")
    over = ["dataset.name=folder", f"dataset.path={tmp_path}", "steps=2"]
    cfg = config.resolve(overrides=over if size == 16 else [*over, f"dataset.size={size}"])
    model = build_components(cfg).model
    assert cfg["model"]["attention_resolutions"] == "auto"
    attention = {level.blocks[0].attn is not None for level in model.down}
    assert attention == {False, True}  # the lowest level has attention, the full-resolution one not
    x = torch.randn(2, 3, size, size)
    assert model(x, torch.zeros(2)).shape == x.shape
    digits = build_components(config.resolve(overrides=["steps=2"])).model
    assert [b.attn is not None for level in digits.down for b in level.blocks] == [False, True]  # [4]


def test_auto_attention_is_the_lowest_level_and_a_wrong_word_is_one_sentence():
    auto = models.build(
        "unet", (1, 8, 8), channels=16, channel_mult=[1, 2], attention_resolutions="auto", groups=8
    )
    four = models.build(
        "unet", (1, 8, 8), channels=16, channel_mult=[1, 2], attention_resolutions=[4], groups=8
    )
    assert models.count_parameters(auto) == models.count_parameters(four)
    assert [b.attn is not None for level in auto.down for b in level.blocks] == [False, False, True, True]
    with pytest.raises(ValueError, match=r"model\.attention_resolutions='lowest' is invalid; allowed: auto"):
        models.build("unet", (1, 8, 8), attention_resolutions="lowest")
