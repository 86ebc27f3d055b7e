"""Crash anywhere, lose at most one interval: train in a subprocess, SIGKILL it at random moments (half of the
kills aimed inside a checkpoint write), resume with ``--resume`` until the run completes, and compare the logged
losses with an unbroken run of the same seed — to the bit, on CPU.

After every kill the newest ``step_*`` checkpoint on disk must load (a half-written one is never picked as the
latest). The run uses DDC (``sampler.name=ddc sampler.clusters=4 sampler.pacing=patience sampler.patience=4``) so stage changes — and
so the sampler's state — fall between kills. ``DIFFUSION_CURRICULUM_TEST_SLOW_CHECKPOINT`` makes each
checkpoint write sleep between the tensor file and the rename, so a kill aimed at a write lands inside it.

    PYTHONPATH=src python benchmarks/kill_resume.py                 # 20 kills, prints the figures as JSON
    PYTHONPATH=src python benchmarks/kill_resume.py --kills 50 --seed 3

``tests/test_reliability.py`` runs the same loop with 3 kills (and the full loop under ``-m slow``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from diffusion_curriculum import checkpoint, plots  # noqa: E402

#: the settings of the killed run: an 8x8 digits UNet with 8 channels, DDC changing stage within ~30 steps
SETTINGS = [
    "steps=60",
    "batch_size=16",
    "model.channels=8",
    "model.groups=8",
    "model.attention_resolutions=[4]",
    "eval.samples=8",
    "eval.steps=4",
    "eval_every=0",
    "checkpoint_every=5",
    "keep_checkpoints=2",
    "log_every=1",
    "progress=false",
    "metrics.enabled=false",
    "sampler.name=ddc",
    "sampler.clusters=4",
    "sampler.pacing=patience",
    "sampler.patience=4",
]
SLOW_CHECKPOINT_S = 0.4


def settings_for(kills: int, steps: int | None = None) -> list[str]:
    """SETTINGS with enough steps that ``kills`` kills land before the run ends (each life of the process
    trains only a few steps before it is killed); ``steps`` overrides."""
    steps = steps or max(60, 10 * kills)
    return [s for s in SETTINGS if not s.startswith("steps=")] + [f"steps={steps}"]


def _env(slow: float) -> dict:
    src = str(ROOT / "src")
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",  # bit-equality needs the same thread count on both sides; and keeps CPU modest
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
        "DIFFUSION_CURRICULUM_TEST_SLOW_CHECKPOINT": str(slow),
    }


def _start(out: Path, settings: list[str], slow: float) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "diffusion_curriculum",
        "train",
        "--out",
        str(out),
        "--resume-if-present",
        *settings,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(slow))


def training_lines(run: Path) -> list[tuple]:
    """(step, loss, skipped, lr, sampler status) of every training line of a run's metrics.jsonl."""
    return [
        (r["step"], r["loss"], r.get("skipped"), r["lr"], json.dumps(r.get("sampler"), sort_keys=True))
        for r in plots.read_metrics(run / "metrics.jsonl")
        if "loss" in r
    ]


def _tmp_writes(ckpt: Path, pid: int | None = None) -> list[Path]:
    """The temporary checkpoint directories (of process ``pid`` only, if given)."""
    if not ckpt.is_dir():
        return []
    return [
        p
        for p in ckpt.iterdir()
        if p.name.startswith(".tmp-") and (pid is None or p.name.endswith(f"-{pid}"))
    ]


def _newest_loads(ckpt: Path) -> bool:
    found = checkpoint.list_checkpoints(ckpt)
    if not found:
        return True
    try:
        checkpoint.load(found[0])
    except checkpoint.CheckpointError:
        return False
    return True


def _traceback(text: str) -> bool:
    return "Traceback (most recent call last)" in text


def kill_resume(
    workdir: str | Path,
    kills: int = 20,
    seed: int = 0,
    settings: list[str] | None = None,
    slow: float = SLOW_CHECKPOINT_S,
    timeout: float = 300.0,
) -> dict:
    """Run the loop in ``workdir``; return the figures (see the module docstring). Raises nothing on a failed
    check: the caller asserts on the figures."""
    settings = settings_for(kills) if settings is None else settings
    rng = random.Random(seed)
    work = Path(workdir)
    ref, run = work / "unbroken", work / "killed"
    r = subprocess.run(
        [sys.executable, "-m", "diffusion_curriculum", "train", "--out", str(ref), *settings],
        capture_output=True,
        text=True,
        env=_env(0),
        timeout=timeout,
    )
    if r.returncode != 0:
        raise RuntimeError(f"the unbroken reference run failed: {r.stderr[-2000:]}")
    tracebacks = int(_traceback(r.stderr))
    ckpt = run / "checkpoints"
    figures = {
        "kills": 0,
        "kills_inside_checkpoint_write": 0,
        "runs_completed_before_kill": 0,
        "newest_checkpoint_unreadable": 0,
        "resumes": 0,
        "half_written_dirs_left_by_kills": 0,
    }
    t0 = time.perf_counter()
    for i in range(kills):
        p = _start(run, settings, slow)
        aim_at_write = i % 2 == 0
        deadline = time.perf_counter() + timeout
        if aim_at_write:
            # wait until a checkpoint write is in progress (a .tmp- directory exists), then kill inside it
            while p.poll() is None and not _tmp_writes(ckpt, p.pid) and time.perf_counter() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, slow * 0.6))
        else:
            # a random moment: wait for the process to start training (a new line in metrics.jsonl), then a
            # random delay of up to about one checkpoint interval
            start_lines = len(training_lines(run)) if run.exists() else 0
            while p.poll() is None and time.perf_counter() < deadline:
                if run.exists() and len(training_lines(run)) > start_lines:
                    break
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 1.5))
        inside = bool(_tmp_writes(ckpt, p.pid))
        if p.poll() is not None:  # it finished (or failed) before the kill
            out, err = p.communicate()
            tracebacks += int(_traceback(err))
            if p.returncode != 0:
                raise RuntimeError(f"a resumed run failed (status {p.returncode}): {err[-2000:]}")
            figures["runs_completed_before_kill"] += 1
            break
        p.send_signal(signal.SIGKILL)
        _, err = p.communicate()
        tracebacks += int(_traceback(err))
        figures["kills"] += 1
        figures["kills_inside_checkpoint_write"] += int(inside)
        figures["newest_checkpoint_unreadable"] += int(not _newest_loads(ckpt))
        figures["half_written_dirs_left_by_kills"] += len(_tmp_writes(ckpt, p.pid))
    # finish the run
    r = subprocess.run(
        [sys.executable, "-m", "diffusion_curriculum", "train", "--out", str(run), "--resume", *settings],
        capture_output=True,
        text=True,
        env=_env(0),
        timeout=timeout,
    )
    tracebacks += int(_traceback(r.stderr))
    figures["resumes"] = figures["kills"] + 1
    figures["half_written_dirs_left_at_end"] = len(_tmp_writes(ckpt))
    figures["completed"] = r.returncode == 0 and (run / "summary.json").is_file()
    if r.returncode != 0:
        figures["final_error"] = r.stderr[-2000:]
    a, b = training_lines(ref), training_lines(run)
    figures["logged_steps"] = len(a)
    figures["missing_or_extra_lines"] = abs(len(a) - len(b)) + sum(1 for x, y in zip(a, b) if x[0] != y[0])
    figures["losses_differing"] = sum(1 for x, y in zip(a, b) if x[1] != y[1])
    figures["lines_differing"] = sum(1 for x, y in zip(a, b) if x != y)
    figures["stages_seen"] = len({x[4] for x in a})
    figures["tracebacks"] = tracebacks
    figures["wall_s"] = round(time.perf_counter() - t0, 1)
    return figures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments (the run's seed is fixed)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default max(60, 10 x kills))")
    ap.add_argument("--dir", help="work directory (default: a temporary one)")
    args = ap.parse_args()
    settings = settings_for(args.kills, args.steps)
    with tempfile.TemporaryDirectory(prefix="kill-resume-") as tmp:
        figures = kill_resume(args.dir or tmp, kills=args.kills, seed=args.seed, settings=settings)
    print(json.dumps(figures, indent=2))
    ok = (
        figures["completed"]
        and figures["losses_differing"] == 0
        and figures["lines_differing"] == 0
        and figures["missing_or_extra_lines"] == 0
        and figures["newest_checkpoint_unreadable"] == 0
        and figures["tracebacks"] == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
