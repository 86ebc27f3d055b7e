"""DiT, the Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers"),
unconditional or class-conditional.

The image is cut into ``patch_size`` x ``patch_size`` patches, each linearly embedded into one token, plus a
fixed 2-D sin-cos position embedding (§3.2, "Patchify"). The tokens go through ``depth`` transformer blocks
conditioned on the time by adaLN-Zero (§3.2, "DiT block design"), then a final adaptive LayerNorm and a linear
layer map each token back to its patch's pixels. With ``num_classes`` the label embedding (one more row for the
null class that label dropout trains, §3.2 and App. A) is added to the time embedding: c = t + y.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import common

# Table 1 of the paper: (depth, hidden size, heads) of the model configurations.
DIT_SIZES: dict[str, tuple[int, int, int]] = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}

FREQUENCY_DIM = 256  # width of the sinusoidal time features, as in the paper's code


def sincos_position_embedding(hidden: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D position embedding [grid_h * grid_w, hidden] in row-major token order: the first half of the
    features is the 1-D sin-cos embedding of the row, the second half that of the column (Vaswani et al. 2017,
    §3.5, extended to 2-D as in MAE and DiT §3.2). ``hidden`` must be divisible by 4."""
    quarter = hidden // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")

    def axis(pos: torch.Tensor) -> torch.Tensor:
        args = pos.reshape(-1, 1).double() * omega[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)

    return torch.cat([axis(rows), axis(cols)], dim=1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Adaptive LayerNorm's affine part: x · (1 + scale) + shift, scale and shift regressed from the time."""
    return x * (1 + scale) + shift


class Attention(nn.Module):
    """Multi-head self-attention over the tokens."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        h = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(h.transpose(1, 2).reshape(B, N, C))


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning (DiT §3.2, Fig. 3).

    From the (SiLU'd) time embedding c, one linear layer regresses the shift and scale of both LayerNorms and
    a gate α on each residual branch: x + α · branch(LayerNorm(x) · (1 + scale) + shift). That layer starts at
    zero, so α = 0 and every block is the identity at initialisation; the paper finds this trains markedly
    better than plain adaLN or cross-attention conditioning (Fig. 5), echoing the zero-initialised last
    BatchNorm γ of Goyal et al. 2017 in residual networks.
    """

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        mlp_hidden = max(1, int(hidden * mlp_ratio))
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads, dropout)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, mlp_hidden),
            nn.GELU(approximate="tanh"),
            nn.Dropout(dropout),
            nn.Linear(mlp_hidden, hidden),
        )
        self.adaLN_modulation = nn.Linear(hidden, 6 * hidden)  # zero-initialised by DiT.reset_parameters

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c)[
            :, None, :
        ].chunk(6, dim=-1)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """Adaptive LayerNorm, then a linear map from each token to its patch's p·p·C pixel values."""

    def __init__(self, hidden: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Linear(hidden, 2 * hidden)
        self.linear = nn.Linear(hidden, patch_size * patch_size * out_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c)[:, None, :].chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """DiT for images of shape ``data_shape = (C, H, W)``; ``forward(x [B, C, H, W], t [B][, y [B]])`` returns a
    tensor shaped like ``x`` (no learned variance output; ``y`` only with ``num_classes``).

    Args:
        data_shape: ``(C, H, W)`` of one image.
        size: a configuration of Table 1 of the paper: ``"S"``, ``"B"``, ``"L"`` or ``"XL"``.
        patch_size: side of a square patch (the paper's p); must divide H and W. Tokens = H·W / p².
        depth, hidden, heads: override the size's number of blocks, width and attention heads
            (e.g. ``depth=2, hidden=64, heads=2`` for tests and tiny runs). ``hidden`` must be divisible by 4
            (the 2-D position embedding) and by ``heads``.
        mlp_ratio: MLP width as a multiple of ``hidden``.
        dropout: dropout probability on attention weights and in the MLPs.
        num_classes: ``None`` (unconditional) or the number of classes, for ``forward(x, t, y)`` with the
            paper's label embedding (a table of ``num_classes + 1`` rows, the last the null class).
    """

    def __init__(
        self,
        data_shape: tuple[int, ...],
        size: str = "S",
        patch_size: int = 2,
        depth: int | None = None,
        hidden: int | None = None,
        heads: int | None = None,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        num_classes: int | None = None,
    ):
        super().__init__()
        self.data_shape = common.data_shape_of("dit", data_shape, ndim=3)
        in_ch, height, width = self.data_shape
        key = size.upper() if isinstance(size, str) else None
        if key not in DIT_SIZES:
            raise ValueError(f"model.size={size!r} is not known; allowed: {common.join(DIT_SIZES)}")
        size_depth, size_hidden, size_heads = DIT_SIZES[key]
        depth = size_depth if depth is None else common.integer("depth", depth)
        hidden = size_hidden if hidden is None else common.integer("hidden", hidden)
        heads = size_heads if heads is None else common.integer("heads", heads)
        patch_size = common.integer("patch_size", patch_size)
        mlp_ratio = common.real("mlp_ratio", mlp_ratio, 0.0, low_open=True)
        dropout = common.real("dropout", dropout, 0.0, 1.0)
        if height % patch_size or width % patch_size:
            common_divisors = [d for d in common.divisors(height) if width % d == 0]
            raise ValueError(
                f"model.patch_size={patch_size} does not divide the {height}x{width} image; "
                f"allowed: {common.join(common_divisors)}"
            )
        if hidden % 4:
            raise ValueError(
                f"model.hidden={hidden} is not allowed; it must be divisible by 4 (the 2-D sin-cos position "
                "embedding gives a quarter of the features to each of sin/cos of rows/columns)"
            )
        if hidden % heads:
            raise ValueError(
                f"model.heads={heads} does not divide model.hidden={hidden}; allowed: a divisor of {hidden}, "
                f"e.g. {common.join(d for d in common.divisors(hidden) if d <= 16)}"
            )

        self.patch_size = patch_size
        self.grid = (height // patch_size, width // patch_size)
        self.patch_embed = nn.Conv2d(in_ch, hidden, patch_size, stride=patch_size)
        # Fixed, not learned (§3.2); kept out of the state dict because it is recomputed from the shape.
        pos_embed = sincos_position_embedding(hidden, *self.grid)[None]
        self.register_buffer("pos_embed", pos_embed, persistent=False)
        self.time_embed = common.TimestepEmbedding(FREQUENCY_DIM, hidden)
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, mlp_ratio, dropout) for _ in range(depth))
        self.final = FinalLayer(hidden, patch_size, in_ch)
        self.class_embed: common.ClassEmbedding | None = None
        self.reset_parameters()
        # created after the other layers' initialisation: an unconditional DiT's weights are unchanged
        self.class_embed = common.class_embedding(num_classes, hidden)
        self.null_class = num_classes
        self._init_class_embed()

    def reset_parameters(self) -> None:
        """Initialise as the paper's code does: Xavier-uniform linear layers (the patch embedding treated as
        one), zero biases, N(0, 0.02²) time MLP, and zero adaLN modulations and output layer, which makes
        every block start as the identity and the network's output start at zero (adaLN-Zero, §3.2)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for layer in self.time_embed.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            common.zero_(block.adaLN_modulation)
        common.zero_(self.final.adaLN_modulation)
        common.zero_(self.final.linear)
        self._init_class_embed()

    def _init_class_embed(self) -> None:
        """The paper's code: an N(0, 0.02²) label-embedding table (the null class's row included)."""
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.table.weight, std=0.02)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        common.check_input(x, self.data_shape, "dit")
        B, C, H, W = x.shape
        p, (gh, gw) = self.patch_size, self.grid
        c = common.add_class(self.time_embed(common.batch_time(t, x)), self.class_embed, y, x, "dit")
        # SiLU once here, not at the head of every adaLN_modulation (the paper's Sequential(SiLU, Linear)).
        c = F.silu(c)
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # [B, tokens, hidden]
        for block in self.blocks:
            h = block(h, c)
        h = self.final(h, c)  # [B, tokens, p * p * C]
        # Unpatchify: token (i, j) holds the p x p x C pixels of patch (i, j).
        h = h.reshape(B, gh, gw, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, H, W)
        return h.to(x.dtype)
