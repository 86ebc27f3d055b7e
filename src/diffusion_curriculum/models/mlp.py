"""A residual MLP denoiser for low-dimensional points (the toy 2-D datasets).

The input is projected to ``hidden`` features, passed through ``depth`` pre-norm residual blocks, each of
which adds the time embedding to its normalised input, and projected back. There is no convolution or
attention: for 2-D points the whole sample is one vector.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import common


class ResidualBlock(nn.Module):
    """h + Linear(Dropout(SiLU(LayerNorm(h) + emb))). Adding the time embedding inside every block, rather
    than only at the input, keeps the time signal from fading through depth."""

    def __init__(self, hidden: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return h + self.linear(self.dropout(F.silu(self.norm(h) + emb)))


class MLP(nn.Module):
    """Residual MLP for points of shape ``data_shape = (D,)``; ``forward(x [B, D], t [B][, y [B]]) -> [B, D]``.

    Args:
        data_shape: ``(D,)``, e.g. ``(2,)`` for the toy 2-D datasets.
        hidden: width of the residual stream.
        depth: number of residual blocks.
        time_dim: width of the sinusoidal time features (before the time MLP).
        dropout: dropout probability inside the residual blocks.
        num_classes: ``None`` (unconditional) or the number of classes: a class embedding (plus the null
            class) added to the time embedding, as the image models do [reconstruction]; ``forward(x, t, y)``.

    About 366k parameters at the defaults with D = 2.
    """

    def __init__(
        self,
        data_shape: tuple[int, ...],
        hidden: int = 256,
        depth: int = 4,
        time_dim: int = 128,
        dropout: float = 0.0,
        num_classes: int | None = None,
    ):
        super().__init__()
        self.data_shape = common.data_shape_of("mlp", data_shape, ndim=1)
        hidden = common.integer("hidden", hidden)
        depth = common.integer("depth", depth)
        time_dim = common.integer("time_dim", time_dim, minimum=2)
        dropout = common.real("dropout", dropout, 0.0, 1.0)
        dim = self.data_shape[0]

        self.time_embed = common.TimestepEmbedding(time_dim, hidden)
        self.input = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(ResidualBlock(hidden, dropout) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden)
        # Zero output: the untrained model predicts 0 (the mean of ε and of centred x0), a calm start.
        self.output = common.zero_(nn.Linear(hidden, dim))
        self.class_embed = common.class_embedding(num_classes, hidden)
        self.null_class = num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        common.check_input(x, self.data_shape, "mlp")
        emb = common.add_class(self.time_embed(common.batch_time(t, x)), self.class_embed, y, x, "mlp")
        h = self.input(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.output(F.silu(self.out_norm(h))).to(x.dtype)
