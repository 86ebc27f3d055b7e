"""Data-parallel training under torchrun (2 CPU processes, gloo): identical sampler state on every rank, the
global batch of a single process, rank 0 alone writes, and an interrupted run resumes exactly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY
from ddp_worker import plain
from diffusion_curriculum import checkpoint, config, plots
from diffusion_curriculum.errors import ConfigError
from diffusion_curriculum.train import DistContext, Trainer
from diffusion_curriculum.training import trainer as trainer_mod

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with gloo",
)

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "ddp_worker.py"
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    "DIFFUSION_CURRICULUM_DIST_TIMEOUT_MIN": "2",  # a hung test fails within minutes, not half an hour
}
# 2 processes share the global batch of 16; 20 steps with a checkpoint every 10 and a log line every 2
SMALL = [*TINY, "steps=20", "log_every=2", "device=cpu"]
# adaptive pacing with 2-step windows: stage decisions by convergence (or by the 5-step cap) on both ranks
DDC = ["sampler.name=ddc", "sampler.clusters=4", "sampler.window=2", "sampler.max_steps_per_stage=5"]
# with the learned edm2-uncertainty weighting, whose gradients the trainer averages itself (outside DDP)
IMPORTANCE = [
    "sampler.name=loss-second-moment",
    "sampler.history=1",
    "process.T=20",
    "weighting.name=edm2-uncertainty",
]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def torchrun(*args: str, expect: int = 0) -> subprocess.CompletedProcess:
    r = subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, env=ENV, timeout=240, cwd=ROOT)
    assert r.returncode == expect, r.stdout + r.stderr
    return r


def losses(run: Path) -> list[tuple]:
    return [(r["step"], r["loss"]) for r in plots.read_metrics(run / "metrics.jsonl") if "loss" in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, list[dict]]]:
    """2-process runs in one torchrun launch (torch starts once), in order: DDC; DDC again in the same directory
    without --resume (refused); loss-second-moment importance sampling; DDC with a NaN loss on rank 1 only; DDC
    with a SIGTERM reaching rank 1 after step 4; a class-conditional run — these six in process groups the
    worker creates — then DDC with Ctrl-C reaching rank 1 after step 7, in a group the Trainer creates from
    torchrun's environment, as the CLI does. Name -> (run directory, each rank's record)."""
    root = tmp_path_factory.mktemp("ddp")
    short = ["steps=6", "checkpoint_every=0"]
    jobs = {  # name: (run directory, overrides, worker's group store, more settings for the worker)
        "ddc": ("ddc", [*SMALL, *DDC], "store-ddc", {}),
        "occupied": ("ddc", [*SMALL, *DDC], "store-occupied", {}),
        "importance": (
            "importance",
            [*SMALL, *IMPORTANCE, "steps=12", "checkpoint_every=0"],
            "store-imp",
            {},
        ),
        "skip": ("skip", [*SMALL, *DDC, *short, "on_nonfinite=skip"], "store-skip", {"poison_step": 3}),
        "terminated": (
            "terminated",
            [*SMALL, *DDC],
            "store-term",
            {"interrupt_after": 4, "signal": "SIGTERM"},
        ),
        "cond": ("cond", [*SMALL, *short, "cond.enabled=true", "cond.drop_prob=0.5"], "store-cond", {}),
        "accumulate": ("accumulate", [*SMALL, *short, "accumulate=2"], "store-acc", {}),
        "interrupted": ("interrupted", [*SMALL, *DDC], None, {"interrupt_after": 7}),
    }
    spec = []
    for name, (out, overrides, store, more) in jobs.items():
        spec.append(
            {
                "out": str(root / out),
                "dump": str(root / f"{name}-ranks"),
                "overrides": overrides,
                "store": str(root / store) if store else None,
                **more,
            }
        )
    (root / "jobs.json").write_text(json.dumps(spec))
    torchrun(str(WORKER), str(root / "jobs.json"))
    return {
        name: (
            root / out,
            [json.loads((root / f"{name}-ranks" / f"rank{r}.json").read_text()) for r in range(2)],
        )
        for name, (out, *_) in jobs.items()
    }


@pytest.fixture
def ddc_run(runs):
    return runs["ddc"]


def test_ddc_sampler_state_and_weights_are_identical_on_every_rank(ddc_run):
    _, ranks = ddc_run
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world"] == 2 for r in ranks)
    assert all(r["step"] == 20 and not r["interrupted"] for r in ranks)
    assert ranks[0]["sampler"] == ranks[1]["sampler"]
    assert ranks[0]["sampler"]["stage"] > 1  # the pacing decided something (on the all-reduced loss)
    assert ranks[0]["weights"] == ranks[1]["weights"]


def test_union_of_rank_batches_is_the_single_process_global_batch(ddc_run, tmp_path):
    _, ranks = ddc_run
    single = Trainer(config.resolve(overrides=[*SMALL, *DDC]), tmp_path / "single")
    assert single.world == 1 and single.batcher.batch_size == 16
    for step, (a, b) in enumerate(zip(ranks[0]["indices"], ranks[1]["indices"], strict=True)):
        assert len(a) == len(b) == 8
        single.batcher.next()
        assert a + b == single.batcher.last_indices.tolist(), step
    assert len(ranks[0]["indices"]) == 20


def test_a_conditional_run_keeps_every_rank_in_step_and_each_rank_drops_its_own_labels(runs):
    """The class embedding (with its null row, trained by the dropped labels) is averaged like every other
    weight; each rank draws its label drops from its own stream, saved per rank in the checkpoint."""
    out, ranks = runs["cond"]
    assert all(r["step"] == 6 and r["world"] == 2 for r in ranks)
    assert ranks[0]["weights"] == ranks[1]["weights"]
    _, state = checkpoint.load(checkpoint.list_checkpoints(out / "checkpoints")[0])
    assert state["model"]["class_embed.table.weight"].shape[0] == 11  # 10 digit classes and the null class
    own, other = state["label_dropout"]["generator"], state["ranks"]["1"]["label_dropout"]["generator"]
    assert not torch.equal(torch.as_tensor(own), torch.as_tensor(other))


def test_only_rank_0_writes(ddc_run):
    out, ranks = ddc_run
    w0, w1 = ranks[0]["writes"], ranks[1]["writes"]
    assert w1 == {"checkpoint": 0, "grid": 0, "file": 0}
    assert w0["checkpoint"] == 2 and w0["grid"] >= 2 and w0["file"] >= 2  # config.yaml, summary.json
    assert [p.name for p in checkpoint.list_checkpoints(out / "checkpoints")] == [
        "step_00000020",
        "step_00000010",
    ]
    steps = [s for s, _ in losses(out)]
    assert steps == list(range(2, 21, 2))  # each line once: no second writer
    evals = [r for r in plots.read_metrics(out / "metrics.jsonl") if "t_hist" in r]
    assert len(evals) == 1 and sum(evals[0]["t_hist"]) == 20 * 16  # the histogram sums both ranks' draws
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 20
    _, state = checkpoint.load(out / "checkpoints" / "step_00000020")
    assert state["world_size"] == 2 and set(state["ranks"]) == {"1"}


def test_rank_0s_refusal_reaches_every_rank(runs):
    """Rank 0 alone checks the run directory; the other ranks raise its sentence instead of waiting."""
    _, (r0, r1) = runs["occupied"]
    assert r0["error"] == r1["error"] == "ConfigError"
    assert "already holds a run; pass --resume" in r0["message"]
    assert r1["message"] == r0["message"] + " (reported by rank 0)"


def test_loss_second_moment_history_is_identical_on_every_rank(runs):
    _, ranks = runs["importance"]
    a, b = ranks[0]["sampler"], ranks[1]["sampler"]
    assert a == b
    # every rank saw both ranks' (t, loss) of the 8 steps read by step 12 (two 4-step windows; the third is
    # read one window later): 8 steps of the global batch of 16
    assert sum(a["counts"]["values"]) == 8 * 16
    assert ranks[0]["weights"] == ranks[1]["weights"]


def test_a_nonfinite_loss_on_one_rank_is_skipped_on_every_rank(runs):
    out, ranks = runs["skip"]
    # rank 1 alone saw it (each rank counts its own); the gradients DDP averaged were zeroed on both ranks alike
    assert [(r["step"], r["skipped"]) for r in ranks] == [(6, 0), (6, 1)]
    assert ranks[0]["weights"] == ranks[1]["weights"] and ranks[0]["sampler"] == ranks[1]["sampler"]
    assert json.loads((out / "summary.json").read_text())["skipped_steps"] == 1


def test_resume_with_another_number_of_processes_is_one_config_error(ddc_run, tmp_path):
    out, _ = ddc_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with pytest.raises(ConfigError, match=r"written by 2 process\(es\) but this run has 1; resume with 2"):
        Trainer(config.resolve(overrides=[*SMALL, *DDC]), copy, resume=True, log=lambda _: None)


def test_interrupted_run_resumes_exactly(runs):
    """Ctrl-C reaches rank 1 after step 7: the ranks' flags meet in the all-reduce of step 8 and are read at step
    10 (stop requests are agreed every 2 steps here), so both ranks stop after step 10 and save one checkpoint;
    `torchrun ... train --resume` then logs the unbroken run's losses to the bit."""
    ref, _ = runs["ddc"]
    out, ranks = runs["interrupted"]
    assert all(r["interrupted"] and r["step"] == 10 for r in ranks)
    assert all(r["group_destroyed"] for r in ranks)  # the Trainer created the group, and destroyed it
    assert ranks[0]["sampler"] == ranks[1]["sampler"]
    assert checkpoint.list_checkpoints(out / "checkpoints")[0].name == "step_00000010"
    r = torchrun("-m", "diffusion_curriculum", "train", "--out", str(out), "--resume")
    assert r.stderr.count("resumed from step_00000010") == 1  # rank 0 alone speaks
    assert losses(out) == losses(ref)
    _, a = checkpoint.load(out / "checkpoints" / "step_00000020")
    _, b = checkpoint.load(ref / "checkpoints" / "step_00000020")
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    assert plain(a["sampler"]) == plain(b["sampler"])


def test_sigterm_on_one_rank_stops_every_rank_at_one_step_with_one_checkpoint(runs):
    """SIGTERM (a scheduler's stop) reaches rank 1 after step 4: as with Ctrl-C, its flag goes into the
    all-reduce of step 4 and is read at step 6, so both ranks stop after step 6 and save one checkpoint of it
    that resumes (as the Ctrl-C run shows)."""
    out, ranks = runs["terminated"]
    assert all(r["interrupted"] and r["step"] == 6 for r in ranks)
    assert ranks[0]["sampler"] == ranks[1]["sampler"] and ranks[0]["weights"] == ranks[1]["weights"]
    assert [p.name for p in checkpoint.list_checkpoints(out / "checkpoints")] == ["step_00000006"]
    assert ranks[0]["writes"]["checkpoint"] == 1 and ranks[1]["writes"]["checkpoint"] == 0


def test_batch_size_must_split_over_the_processes(tmp_path, monkeypatch):
    """Checked on every rank before anything collective or written (here as rank 0 of 2, without a group)."""
    monkeypatch.setattr(
        trainer_mod, "setup_distributed", lambda name: (DistContext(0, 2), torch.device("cpu"))
    )
    with pytest.raises(
        ConfigError,
        match=r"batch_size=15 is the global batch and must split evenly over the 2 processes; use a multiple of "
        r"2, the nearest being 14 or 16 \(7 or 8 per process\)",
    ):
        Trainer(config.resolve(overrides=[*SMALL, "batch_size=15"]), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_single_process_needs_no_process_group(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    t = Trainer(config.resolve(overrides=[*SMALL, "steps=2"]), tmp_path / "r")
    assert (t.rank, t.world, t.net) == (0, 1, t.model) and not torch.distributed.is_initialized()
    t.run()
    assert not torch.distributed.is_initialized()


def test_the_validation_loss_of_a_2_process_run_is_the_single_process_one_of_its_weights(ddc_run, tmp_path):
    """Rank 0 scores the same fixed validation set a single process would: the 2-process run's final record equals
    a single-process trainer's validation loss of that run's final EMA weights."""
    from diffusion_curriculum.training import rundir

    run, _ = ddc_run
    final = [r for r in plots.read_metrics(run / "metrics.jsonl") if "val_loss" in r][-1]
    single = Trainer(config.resolve(overrides=[*SMALL, *DDC]), tmp_path / "single")
    rundir.load_newest_ema(single.ema, checkpoint.list_checkpoints(run / "checkpoints"), run)
    got = single.validator(single.ema)
    assert {k: got[k] for k in final if k.startswith("val_")} == {
        k: v for k, v in final.items() if k.startswith("val_")
    }


def test_accumulated_micro_batches_keep_every_rank_in_step(runs):
    """accumulate=2 under DDP (no_sync for the first micro-batch): both ranks train every step and end with the
    same weights, and each rank's batch is its whole share of the global batch of 16 (8), split in two."""
    _, ranks = runs["accumulate"]
    assert all(r["step"] == 6 and not r["interrupted"] for r in ranks)
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert all(len(b) == 8 for r in ranks for b in r["indices"])
