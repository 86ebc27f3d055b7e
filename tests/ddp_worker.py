"""One rank of data-parallel test runs, started by ``torch.distributed.run`` from tests/test_ddp.py.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py JOBS.json

``JOBS.json`` lists runs, trained one after the other in the same processes (so the test pays the start-up of
torch once): ``[{"out": DIR, "dump": DIR, "overrides": [...], "interrupt_after": N or null, "poison_step": N or null,
"store": FILE or null}, ...]``. A run with ``store`` gets a process group that this script creates (on a file store) and
destroys: the Trainer uses it and leaves it alone. A run without builds the group from torchrun's environment,
as ``diffusion-curriculum train`` does, and destroys it at its end; PyTorch cannot create the group from the
same torchrun environment twice in one process, so at most one, the last, may do that.
This rank records what it did — the dataset indices of each of its batches, its sampler state and a hash of
its weights at the end, which writes it attempted — in ``dump/rank<r>.json``. ``interrupt_after: N`` sends
rank 1 a SIGINT once step N is done, as Ctrl-C under torchrun would (``"signal": "SIGTERM"`` sends that instead,
as a scheduler would). A Trainer that refuses to start (a
ConfigError, say) is recorded as ``{"error": class name, "message": ...}``. ``poison_step: N`` makes rank 1's
loss NaN at step N (rank 0's stays finite).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import torch

from diffusion_curriculum import checkpoint, config, data
from diffusion_curriculum import train as train_mod
from diffusion_curriculum.training import rundir
from diffusion_curriculum.training import step as step_mod


def plain(x):
    """A JSON-able copy of a sampler state (tensors become lists, with their dtype)."""
    if isinstance(x, torch.Tensor):
        return {"dtype": str(x.dtype), "values": x.tolist()}
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x


def shared(state):
    """A sampler state without the rows of the observation window in flight, which are each rank's own."""
    if isinstance(state, dict):
        return {k: shared(v) for k, v in state.items() if k not in ("partial", "partial_tags")}
    return state


def run_one(job: dict) -> None:
    writes = {"checkpoint": 0, "grid": 0, "file": 0}
    real_save, real_grid, real_write = checkpoint.save, data.save_grid, rundir.atomic_write

    def save(*a, **k):
        writes["checkpoint"] += 1
        return real_save(*a, **k)

    def grid(*a, **k):
        writes["grid"] += 1
        return real_grid(*a, **k)

    def write(*a, **k):
        writes["file"] += 1
        return real_write(*a, **k)

    checkpoint.save, data.save_grid, rundir.atomic_write = save, grid, write
    try:
        try:
            t = train_mod.Trainer(config.resolve(overrides=job["overrides"]), job["out"])
        except ValueError as e:  # a ConfigError, CheckpointError or DataError: record it
            dump = Path(job["dump"])
            dump.mkdir(parents=True, exist_ok=True)
            rank = torch.distributed.get_rank()
            (dump / f"rank{rank}.json").write_text(json.dumps({"error": type(e).__name__, "message": str(e)}))
            return
        indices: list[list[int]] = []
        real_next = t.batcher.next_labelled  # what the trainer's step calls

        def next_batch():
            x = real_next()
            indices.append(t.batcher.last_indices.tolist())
            return x

        t.batcher.next_labelled = next_batch
        step_mod.STOP_EVERY = 2  # the ranks agree on a stop request every 2 steps (10 by default)
        if job.get("poison_step") is not None and t.rank == 1:  # rank 1 alone sees a NaN loss at that step
            real_objective = t.loss.objective

            def objective(*a, **k):
                loss = real_objective(*a, **k)
                return loss * float("nan") if t.step + 1 == job["poison_step"] else loss

            t.loss.objective = objective
        if job.get("interrupt_after") is not None and t.rank == 1:
            real_advance = t.advance

            def advance():
                real_advance()
                if t.step == job["interrupt_after"]:
                    os.kill(os.getpid(), getattr(signal, job.get("signal", "SIGINT")))

            t.advance = advance
        interrupted = False
        try:
            t.run()
        except KeyboardInterrupt:
            interrupted = True
    finally:
        checkpoint.save, data.save_grid, rundir.atomic_write = real_save, real_grid, real_write
    weights = hashlib.sha256()
    learned = t.weight_fn.state_dict() if isinstance(t.weight_fn, torch.nn.Module) else {}
    for v in [*t.model.state_dict().values(), *learned.values()]:  # a learned weighting's parameters too
        weights.update(v.detach().cpu().numpy().tobytes())
    record = {
        "rank": t.rank,
        "world": t.world,
        "step": t.step,
        "skipped": t.skipped,
        "interrupted": interrupted,
        "indices": indices,
        "sampler": plain(shared(t.sampler.state_dict())),
        "weights": weights.hexdigest(),
        "writes": writes,
        "group_destroyed": not torch.distributed.is_initialized(),
    }
    Path(job["dump"]).mkdir(parents=True, exist_ok=True)
    (Path(job["dump"]) / f"rank{t.rank}.json").write_text(json.dumps(record))


def main() -> int:
    torch.set_num_threads(1)
    for job in json.loads(Path(sys.argv[1]).read_text()):
        if job.get("store"):
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            torch.distributed.init_process_group(
                "gloo", init_method=f"file://{job['store']}", rank=rank, world_size=world
            )
            try:
                run_one(job)
            finally:
                torch.distributed.destroy_process_group()
        else:
            run_one(job)
    return 0


if __name__ == "__main__":
    sys.exit(main())
