"""The trainer: one loop, every strategy, exact resume.

The package's modules: :mod:`.trainer` (the loop), :mod:`.components` (what a config builds, the device, the
per-stream seeds), :mod:`.distributed` (process group, rank-0 relay, error relay, reductions), :mod:`.state`
(the registry of resumable parts), :mod:`.rundir` (the run directory's files) and :mod:`.hooks` (histogram,
logs, progress bar, Ctrl-C). The loss itself is :mod:`diffusion_curriculum.loss`, the EMA
:mod:`diffusion_curriculum.ema`.

The data path runs one way: batch x0 → ``sampler.sample`` → ``process.add_noise`` → model →
per-sample loss → × weighting × draw weight → mean → backward → AdamW (+ momentum schedule) → EMA; losses flow
back only through ``sampler.observe``. The trainer knows no strategy by name.

Determinism: the model is initialised from ``seed``; batches, timesteps and noise each come from their own
generator derived from (seed, stream name, rank); all of them, the global RNGs, the optimizer, the LR and momentum
schedules, the sampler and the EMA go into every checkpoint, so a resumed run continues the same streams and its
logged losses equal an unbroken run's to the bit on CPU.

Distributed data parallel (``torchrun --nproc_per_node N -m diffusion_curriculum train ...``, and multi-node
through torchrun's usual ``--nnodes``/``--rdzv-*`` options): when ``WORLD_SIZE`` > 1 the trainer initialises
the process group from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) — backend ``nccl`` on GPU (each process takes ``cuda:LOCAL_RANK``), ``gloo`` on CPU — wraps
the model in :class:`~torch.nn.parallel.DistributedDataParallel`, and destroys the group when the run ends.
A process group the caller initialised already is used as it is (and left alone at the end); PyTorch cannot
create the group from the same torchrun environment twice in one process, so code that trains several runs one
after another in the same processes initialises the group itself. Without ``WORLD_SIZE`` > 1 no process group
is created and a run is bit-identical to a plain single-process one.

* **Global batch.** ``batch_size`` is the *global* batch: each of the N processes trains on
  ``batch_size / N`` samples per step (a ``batch_size`` that N does not divide is a ConfigError). The ranks
  walk one shared index stream (:class:`~diffusion_curriculum.data.Batcher`), so the union of their batches at every step is exactly
  the batch a single process with the same ``batch_size`` gets; gradients are averaged by DDP, so a step is
  the single-process step of that batch (up to floating-point summation order and the per-rank t/noise
  draws below). ``accumulate`` A splits each rank's batch into A micro-batches (one backward each, DDP's
  ``no_sync`` for all but the last); the data, noise levels and noise are drawn for the whole rank batch and the
  sampler observes once per step, so A changes the float summation order only (it may change on resume).
* **Random streams.** Timesteps and noise come from per-rank streams, ``stream_seed(seed, name, rank)``
  (rank 0's are the single-process run's); the global torch RNG (dropout) is reseeded per rank after the
  model is built. The model itself is initialised identically on every rank (and DDP broadcasts rank 0's).
* **Samplers.** Every sampler decision that depends on losses is taken on globally reduced values (DDC's
  pacing on the all-reduced mean loss, the importance sampler's history on the all-gathered (t, loss) of
  every rank), so all ranks hold identical sampler state. The logged loss is the all-reduced mean, and a
  non-finite loss on any rank stops (or skips the step on) every rank alike.
* **Rank 0 writes.** Only rank 0 writes ``config.yaml``, ``metrics.jsonl``, the progress bar, the trackers
  (TensorBoard, W&B), sample grids, evaluations (quality metrics included), ``summary.json`` and checkpoints;
  the other ranks wait for each checkpoint write (rank 0 broadcasts its outcome, so a failed write stops every rank with the
  same sentence instead of leaving them waiting). The noise-level histogram of an evaluation sums every rank's
  draws.
* **Resume.** A checkpoint holds the (identical) model, optimizer, schedules, sampler and data-stream state
  once, and the per-rank state — each rank's torch/numpy/python RNG, its timestep and noise generators (and
  CUDA RNG), its noise-level histogram — gathered by rank 0 under ``ranks/<r>`` with ``world_size``. On
  ``--resume`` rank 0 picks the checkpoint (falling back past unusable ones as in a single process) and every
  rank loads it and restores its own streams, so the resumed run's logged losses equal the unbroken run's
  (to the bit on CPU with gloo; NCCL reductions need not be bitwise deterministic).
  The run directory must therefore be on storage every node sees. Resuming with a different number of
  processes is refused with a ConfigError: the per-rank streams cannot be continued exactly then.
* **Interrupts and errors.** Ctrl-C (torchrun forwards SIGINT to every worker) is agreed on through the
  per-step loss all-reduce, so all ranks stop after the same step and save one checkpoint together. An error
  that one rank sees while the others would wait (rank 0's set-up of the run directory, a checkpoint that
  one rank cannot read or write) is shared, so every rank stops with the same sentence; a rank that dies
  otherwise makes torchrun stop the others. Collectives give up after
  ``DIFFUSION_CURRICULUM_DIST_TIMEOUT_MIN`` minutes (default 30), which must exceed rank 0's longest
  evaluation.
"""

from __future__ import annotations

from ..errors import TrainingError
from .components import (
    Components,
    LRSchedule,
    build_components,
    build_momentum,
    build_optimizer,
    resolve_device,
    stream_seed,
)
from .distributed import DistContext, dist_timeout, setup_distributed
from .hooks import T_HIST_BINS, Hook
from .state import RESUMABLE_KEYS, StateRegistry, fingerprint
from .trainer import GRID, Trainer, train

__all__ = [
    "GRID",
    "RESUMABLE_KEYS",
    "T_HIST_BINS",
    "Components",
    "DistContext",
    "Hook",
    "LRSchedule",
    "StateRegistry",
    "Trainer",
    "TrainingError",
    "build_components",
    "build_momentum",
    "build_optimizer",
    "dist_timeout",
    "fingerprint",
    "resolve_device",
    "setup_distributed",
    "stream_seed",
    "train",
]
