"""An ADM-style U-Net denoiser for images (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image
Synthesis", §3 and App. A; built on Ho et al. 2020, "Denoising Diffusion Probabilistic Models", App. B).

Layout, for ``channel_mult = (1, 2, 2)`` on a 32x32 image:

    input conv -> [32x32: res x N] -> down -> [16x16: res x N] -> down -> [8x8: res x N]
               -> middle: res, (attention), res
               -> [8x8: res x (N+1)] -> up -> [16x16: res x (N+1)] -> up -> [32x32: res x (N+1)]
               -> output conv

Every encoder output (including the input conv's and each downsampler's) is saved and concatenated to the
input of one decoder block, which is why the decoder has one more block per level than the encoder.
Self-attention follows the residual block at every level whose feature-map resolution is listed in
``attention_resolutions``.

Each residual block receives the time embedding as a per-channel scale and shift after its second GroupNorm
("adaptive group normalisation", AdaGN: ADM §3, eq. in "Adaptive Group Normalization").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import common

Norm = Callable[[int], nn.Module]


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, AdaGN with the time embedding, GroupNorm-SiLU-dropout-conv, plus a skip
    (a 1x1 conv when the channel count changes).

    The last conv starts at zero, as in ADM's code: every residual block is then the identity at
    initialisation, so a deep U-Net starts out as a shallow one and activations do not grow with depth (the
    same idea as the zero-initialised last BatchNorm γ of Goyal et al. 2017, "Accurate, Large Minibatch SGD",
    §5.1).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, norm: Norm):
        super().__init__()
        self.norm1 = norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)  # -> (scale, shift) for AdaGN
        self.norm2 = norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = common.zero_(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        # AdaGN(h, y) = y_s · GroupNorm(h) + y_b, with y_s written as 1 + scale so zero input is neutral.
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, residual, output projection
    zero-initialised (so, like the residual blocks, it starts as the identity)."""

    def __init__(self, ch: int, num_heads: int, norm: Norm):
        super().__init__()
        self.num_heads = num_heads
        self.norm = norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = common.zero_(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.num_heads, C // self.num_heads, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each [B, heads, H*W, head_dim]
        h = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class Block(nn.Module):
    """A residual block, followed by self-attention at the resolutions that have it."""

    def __init__(self, res: ResBlock, attn: SelfAttention | None):
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return x if self.attn is None else self.attn(x)


class Downsample(nn.Module):
    """Stride-2 3x3 conv (ADM's ``conv_resample``); an odd size n becomes (n + 1) // 2."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling then a 3x3 conv. The target size is the size of the skip connection it
    will be joined to, not 2x the input, so odd sizes (28 -> 14 -> 7 -> 14 -> 28; 7 -> 4 -> 7) come back
    exactly."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


class Level(nn.Module):
    """The blocks at one resolution and the resampler that leaves it (None at the end of the path)."""

    def __init__(self, blocks: list[Block], resample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample


class UNet(nn.Module):
    """ADM-style U-Net for images of shape ``data_shape = (C, H, W)``; ``forward(x [B, C, H, W], t [B][, y [B]])``
    returns a tensor shaped like ``x`` (``y``: class labels of a model built with ``num_classes``; ``None`` or
    ``num_classes`` is the null class).

    Args:
        data_shape: ``(C, H, W)`` of one image.
        channels: base width; level i has ``channels * channel_mult[i]`` channels (ADM's ``model_channels``).
        channel_mult: one multiplier per resolution level; ``len(channel_mult) - 1`` downsamplings, each
            halving the size (rounding up), and every level must be at least 2x2.
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more).
        attention_resolutions: feature-map sizes (the side length; the longer side for non-square images)
            that get self-attention after each residual block, the middle block included; ``[]`` disables
            attention. ``None`` (default) is the choice of Ho et al. and ADM for small images: attention at
            the 16x16 level if there is one, none otherwise. ``"auto"`` (the config's default) puts it at the
            lowest resolution the U-Net reaches — 4 for 8x8 images with two levels, 8 for 16x16, 16 for
            32x32 — so one setting fits every image size. Explicit values must be resolutions that this
            image reaches.
        num_heads: attention heads; must divide the channel count at every attention level.
        dropout: dropout probability inside the residual blocks.
        groups: GroupNorm groups; ``min(groups, C)`` is used for a C-channel norm, and must divide C.
        num_classes: ``None`` (unconditional) or the number of classes: a class embedding (one more row for
            the null class ``num_classes``) is added to the time embedding, as ADM's class-conditional model
            does (Dhariwal & Nichol 2021, App. A: ``emb = time_embed(t) + label_emb(y)``); ``forward(x, t, y)``.

    ``attention_resolutions`` defaults to ``None`` rather than ADM's ``(16,)`` so that the default works for
    every image size while an explicit resolution that the image never reaches is an error, not silently
    ignored.
    """

    def __init__(
        self,
        data_shape: tuple[int, ...],
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] | str | None = None,
        num_heads: int = 4,
        dropout: float = 0.0,
        groups: int = 32,
        num_classes: int | None = None,
    ):
        super().__init__()
        self.data_shape = common.data_shape_of("unet", data_shape, ndim=3)
        in_ch, height, width = self.data_shape
        channels = common.integer("channels", channels)
        channel_mult = common.integers("channel_mult", channel_mult)
        num_res_blocks = common.integer("num_res_blocks", num_res_blocks)
        num_heads = common.integer("num_heads", num_heads)
        dropout = common.real("dropout", dropout, 0.0, 1.0)
        groups = common.integer("groups", groups)

        resolutions, attention = _resolutions_and_attention(
            height, width, channel_mult, attention_resolutions
        )
        level_ch = [channels * m for m in channel_mult]
        _check_heads(resolutions, attention, level_ch, num_heads, channels)

        # Every GroupNorm sees a sum of level widths, all multiples of `base`; a divisor of `base` works.
        base = channels * math.gcd(*channel_mult)
        suggestion = max(d for d in common.divisors(base) if d <= groups)

        def norm(ch: int) -> nn.Module:
            g = min(groups, ch)
            if ch % g:
                raise ValueError(
                    f"model.groups={groups} does not divide the {ch} channels of a GroupNorm in this U-Net "
                    f"(model.channels={channels}, model.channel_mult={list(channel_mult)}); allowed: a group "
                    f"count that divides {base}, e.g. model.groups={suggestion}"
                )
            return nn.GroupNorm(g, ch)

        def block(in_ch: int, out_ch: int, res: int) -> Block:
            res_block = ResBlock(in_ch, out_ch, emb_dim, dropout, norm)
            return Block(res_block, SelfAttention(out_ch, num_heads, norm) if res in attention else None)

        emb_dim = 4 * channels  # ADM / Ho et al.: time-embedding MLP 4x the base width
        self.time_embed = common.TimestepEmbedding(channels, emb_dim)
        self.input_conv = nn.Conv2d(in_ch, level_ch[0], 3, padding=1)

        # Encoder: remember the width of every saved activation; the decoder pops them in reverse.
        skip_ch = [level_ch[0]]
        ch = level_ch[0]
        self.down = nn.ModuleList()
        for i, (res, out_ch) in enumerate(zip(resolutions, level_ch)):
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(block(ch, out_ch, res))
                ch = out_ch
                skip_ch.append(ch)
            last = i == len(level_ch) - 1
            self.down.append(Level(blocks, None if last else Downsample(ch)))
            if not last:
                skip_ch.append(ch)

        # Middle: res, attention (if the lowest resolution has it), res; -1 matches no resolution.
        self.middle = nn.ModuleList([block(ch, ch, resolutions[-1]), block(ch, ch, -1)])

        self.up = nn.ModuleList()
        for i in reversed(range(len(level_ch))):
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(block(ch + skip_ch.pop(), level_ch[i], resolutions[i]))
                ch = level_ch[i]
            self.up.append(Level(blocks, Upsample(ch) if i > 0 else None))

        self.out_norm = norm(ch)
        # Zero output conv (ADM): the untrained model predicts 0, the mean of ε, not large random values.
        self.out_conv = common.zero_(nn.Conv2d(ch, in_ch, 3, padding=1))
        # created last and only when conditional: an unconditional U-Net's initialisation is unchanged
        self.class_embed = common.class_embedding(num_classes, emb_dim)
        self.null_class = num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        common.check_input(x, self.data_shape, "unet")
        emb = common.add_class(self.time_embed(common.batch_time(t, x)), self.class_embed, y, x, "unet")
        # Each ResBlock applies SiLU then its own Linear to the embedding (ADM's emb_layers); SiLU once here.
        emb = F.silu(emb)

        h = self.input_conv(x)
        skips = [h]
        for level in self.down:
            for block in level.blocks:
                h = block(h, emb)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)
                skips.append(h)

        for block in self.middle:
            h = block(h, emb)

        for level in self.up:
            for block in level.blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if level.resample is not None:
                h = level.resample(h, skips[-1].shape[-2:])  # back to the size of the skip it meets next

        return self.out_conv(F.silu(self.out_norm(h))).to(x.dtype)


def _resolutions_and_attention(
    height: int, width: int, channel_mult: tuple[int, ...], attention_resolutions: Sequence[int] | str | None
) -> tuple[list[int], set[int]]:
    """(the resolution of every level, the resolutions with attention), or a ValueError naming
    ``model.channel_mult`` (too many levels for the image) or ``model.attention_resolutions`` (one the image
    never reaches)."""
    # Feature-map sizes per level; a stride-2 conv with padding 1 maps n to ceil(n / 2).
    sizes = [(height, width)]
    for _ in channel_mult[1:]:
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    if len(sizes) > 1 and min(sizes[-1]) < 2:
        max_levels = 1 + sum(min(s) >= 2 for s in sizes[1:])
        raise ValueError(
            f"model.channel_mult={list(channel_mult)} has {len(channel_mult)} levels, which "
            f"downsamples the {height}x{width} image to {sizes[-1][0]}x{sizes[-1][1]}; allowed: at most "
            f"{max_levels} levels for this image size (every level must be at least 2x2)"
        )
    resolutions = [max(s) for s in sizes]
    if attention_resolutions is None:
        return resolutions, {16} & set(resolutions)
    if attention_resolutions == "auto":
        return resolutions, {resolutions[-1]}
    if isinstance(attention_resolutions, str):
        raise ValueError(
            f"model.attention_resolutions={attention_resolutions!r} is invalid; allowed: auto (the lowest "
            "resolution), [] for none, or a list of resolutions such as [8]"
        )
    attention = set(common.integers("attention_resolutions", attention_resolutions, allow_empty=True))
    if not attention <= set(resolutions):
        raise ValueError(
            f"model.attention_resolutions={list(attention_resolutions)} is not allowed: the feature "
            f"maps of this {height}x{width} image with {len(channel_mult)} levels have resolutions "
            f"{common.join(resolutions)}; allowed: a subset of [{common.join(resolutions)}], "
            "[] for none, or auto (the lowest resolution)"
        )
    return resolutions, attention


def _check_heads(
    resolutions: list[int], attention: set[int], level_ch: list[int], num_heads: int, channels: int
) -> None:
    """A ValueError unless ``num_heads`` divides the channels of every attention level, naming both settings
    that make those channels: ``model.channels`` (× its level's multiplier) and ``model.num_heads``."""
    levels = [(res, ch) for res, ch in zip(resolutions, level_ch) if res in attention]
    # the channels that fit every attention level: a multiple of num_heads / gcd(num_heads, multiplier) for each
    multiple = (
        math.lcm(*(num_heads // math.gcd(num_heads, ch // channels) for _, ch in levels)) if levels else 1
    )
    for res, ch in levels:
        if ch % num_heads:
            fit = next(c for c in range(channels, channels + multiple + 1) if c % multiple == 0)
            raise ValueError(
                f"model.channels={channels} gives {ch} channels at the attention resolution {res}, which "
                f"model.num_heads={num_heads} does not divide; use model.channels={fit} (a multiple of {multiple}), "
                f"or model.num_heads set to a divisor of {ch} (e.g. {common.join(common.divisors(ch)[:6])})"
            )
