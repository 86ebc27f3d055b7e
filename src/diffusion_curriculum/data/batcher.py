"""Deterministic, resumable minibatches from an in-memory dataset, also across ranks."""

from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_value, is_int
from ..device import to_device
from .dataset import DataError, Dataset, decode

__all__ = ["Batcher"]


class Batcher:
    """Deterministic, resumable minibatches without replacement from an in-memory :class:`Dataset`.

    The batcher walks an endless stream of indices: epoch after epoch, each a ``torch.randperm(N)`` drawn from
    its own CPU ``torch.Generator`` seeded with ``generator_seed``. Every call to :meth:`next` consumes the
    next *global batch* of ``batch_size * world_size`` entries of that stream; rank ``r`` returns the
    ``r``-th chunk of ``batch_size``. All ranks walk the same stream, so the union of their batches is exactly
    the batch a single process with ``batch_size * world_size`` gets.

    A global batch that runs past the end of an epoch continues into the next permutation, so every batch is
    full. When ``N`` is smaller than the global batch, one batch spans several epochs (each a full
    permutation), so a batch then repeats samples, but every epoch still visits each index exactly once.

    The whole dataset is moved to ``device`` once (a compact dataset's uint8 codes: a quarter of float32's
    memory); a batch is an index into it, decoded to float32 there (:func:`~.dataset.decode`). :attr:`last_indices` holds the
    dataset indices of the last batch (CPU ``Long``); :meth:`next_labelled` returns the batch with its labels.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        generator_seed: int,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
    ):
        check_value("batch_size", batch_size, is_int(batch_size) and batch_size >= 1, "a positive integer")
        check_value("world_size", world_size, is_int(world_size) and world_size >= 1, "a positive integer")
        check_value("rank", rank, is_int(rank) and 0 <= rank < world_size, f"an integer in [0, {world_size})")
        if len(dataset) == 0:
            raise DataError(f"dataset {dataset.name!r} is empty; a Batcher needs at least one sample")
        self.dataset = dataset
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.seed = int(generator_seed)
        self.num_samples = len(dataset)
        self.data = dataset.raw.to(self.device)  # what the dataset holds: float32, or uint8 codes
        self.codec = dataset.codec
        self.labels = None if dataset.labels is None else dataset.labels.to(self.device)
        self.last_indices: Tensor | None = None
        self._g = torch.Generator().manual_seed(self.seed)
        self.epoch = 0
        self.position = 0
        self._perm = torch.randperm(self.num_samples, generator=self._g)

    @property
    def global_batch_size(self) -> int:
        """Entries drawn per step over all ranks: ``batch_size × world_size``."""
        return self.batch_size * self.world_size

    def _take(self, k: int) -> Tensor:
        """The next ``k`` entries of the index stream, drawing new epochs' permutations as needed."""
        parts = []
        while k > 0:
            if self.position >= self.num_samples:
                self.epoch += 1
                self.position = 0
                self._perm = torch.randperm(self.num_samples, generator=self._g)
            m = min(k, self.num_samples - self.position)
            parts.append(self._perm[self.position : self.position + m])
            self.position += m
            k -= m
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def next(self) -> Tensor:
        """This rank's next batch ``[batch_size, ...]``, already on ``device``."""
        return self.next_labelled()[0]

    def next_labelled(self) -> tuple[Tensor, Tensor | None]:
        """This rank's next batch and its labels: ``(x0 [batch_size, ...], labels [batch_size])`` on ``device``
        (``labels`` is ``None`` for a dataset without them). The labels are looked up with the batch's indices,
        so they come in the same deterministic, resumable and rank-sharded order and draw no random numbers:
        a run that ignores them walks exactly the same stream."""
        start = self.rank * self.batch_size
        idx = self._take(self.global_batch_size)[start : start + self.batch_size]
        self.last_indices = idx
        on_device = to_device(idx, self.device)  # pinned, non-blocking: the host does not wait
        x0 = decode(self.data.index_select(0, on_device), self.codec)
        return x0, None if self.labels is None else self.labels.index_select(0, on_device)

    def __iter__(self) -> Batcher:
        return self

    def __next__(self) -> Tensor:
        return self.next()

    def state_dict(self) -> dict:
        """Plain values and tensors only: generator state (uint8), current permutation, position, epoch."""
        return {
            "generator_state": self._g.get_state().clone(),
            "perm": self._perm.clone(),
            "position": int(self.position),
            "epoch": int(self.epoch),
            "num_samples": int(self.num_samples),
            "batch_size": int(self.batch_size),
            "world_size": int(self.world_size),
            "seed": int(self.seed),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where ``state`` was taken (the same subsequent batches).

        ``batch_size`` and ``world_size`` may differ from the saved ones (the index stream is global); the
        dataset size may not.
        """
        for k in ("generator_state", "perm", "position", "epoch"):
            if k not in state:
                raise DataError(f"the batcher state has no {k!r} entry; resume from a complete checkpoint")
        perm = torch.as_tensor(state["perm"]).to(device="cpu", dtype=torch.long).flatten()
        n_saved = int(state.get("num_samples", perm.numel()))
        if n_saved != self.num_samples or perm.numel() != self.num_samples:
            raise DataError(
                f"the batcher state was saved for {n_saved} samples but dataset {self.dataset.name!r} has "
                f"{self.num_samples}; resume with the same dataset or start a new run"
            )
        position = int(state["position"])
        if not 0 <= position <= self.num_samples:
            raise DataError(f"the batcher state has position {position} outside [0, {self.num_samples}]")
        self._g.set_state(torch.as_tensor(state["generator_state"]).to(device="cpu", dtype=torch.uint8))
        self._perm = perm.clone()
        self.position = position
        self.epoch = int(state["epoch"])
