"""Evaluation samples split over processes: which chunks of ``n`` samples each rank makes, the seed each chunk's
noise comes from, and the gather that puts the chunks back in order on rank 0.

``n`` samples are made in chunks of ``batch_size`` (the last may be shorter). Under ``seeding="per-chunk"`` chunk
``c`` draws all its noise (the initial noise and any per-step noise) from its own generator on the sampling
device, seeded with :func:`chunk_seed`, so a chunk's samples depend on (seed, batch_size, c) and the device
type, and not on which process makes it or how many there are. Rank ``r`` of ``world`` makes the chunks
``c ≡ r (mod world)``: every rank makes ⌈chunks / world⌉ or ⌊chunks / world⌋ of them, so none waits for
more than one chunk of another's work. ``seeding="stream"`` (runs from before the choice existed) draws every
chunk from one CPU generator in turn; a chunk then depends on all those before it, so one process makes them
all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SEEDINGS", "Chunk", "chunk_seed", "chunks", "gather_chunks"]

SEEDINGS = ("per-chunk", "stream")

#: chunk c's seed is ``seed + c * _STRIDE`` (mod 2**63): chunk 0 keeps ``seed`` itself, so a single chunk on the
#: CPU draws what the "stream" seeding draws
_STRIDE = 1_000_003


@dataclass(frozen=True)
class Chunk:
    """Chunk ``index`` of an evaluation: samples ``start`` .. ``start + size`` (exclusive)."""

    index: int
    start: int
    size: int


def chunk_seed(seed: int, index: int) -> int:
    """The seed of chunk ``index``'s generator under ``seeding="per-chunk"``."""
    return (int(seed) + int(index) * _STRIDE) % 2**63


def chunks(n: int, batch_size: int, rank: int = 0, world: int = 1) -> list[Chunk]:
    """The chunks of ``n`` samples in batches of ``batch_size`` that rank ``rank`` of ``world`` makes (all of them
    for ``world == 1``), in order."""
    return [
        Chunk(c, start, min(batch_size, n - start))
        for c, start in enumerate(range(0, n, batch_size))
        if c % world == rank
    ]


def gather_chunks(mine: Tensor, n: int, batch_size: int, rank: int, world: int) -> Tensor | None:
    """The ``n`` samples in order on rank 0 (``None`` on the others), from each rank's ``mine``: its chunks of
    :func:`chunks`, concatenated. A collective: every rank calls it. The shares are padded to the longest and
    gathered on the device (one ``all_gather``), so the backend may be gloo or NCCL."""
    rows = [sum(c.size for c in chunks(n, batch_size, r, world)) for r in range(world)]
    if mine.shape[0] != rows[rank]:
        raise ValueError(f"rank {rank} holds {mine.shape[0]} samples but its chunks have {rows[rank]}")
    padded = mine.new_zeros((max(rows), *mine.shape[1:]))
    padded[: mine.shape[0]] = mine
    parts = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(parts, padded.contiguous())
    if rank != 0:
        return None
    out = mine.new_empty((n, *mine.shape[1:]))
    for r in range(world):
        at = 0
        for c in chunks(n, batch_size, r, world):
            out[c.start : c.start + c.size] = parts[r][at : at + c.size]
            at += c.size
    return out
