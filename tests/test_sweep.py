"""sweep: the typed run plan, its command line, and skipping finished runs."""

import json
import sys
from pathlib import Path

from diffusion_curriculum import runlog, sweep


def test_plan_command_selects_the_config_and_resumes_an_existing_run(tmp_path):
    plan = sweep.RunPlan("a", tmp_path / "a", 10, preset="digits", overrides=("steps=10", "seed=3"))
    cmd = plan.command()
    assert cmd[:4] == [sys.executable, "-m", "diffusion_curriculum", "train"]
    assert cmd[4:] == ["--preset", "digits", "--out", str(tmp_path / "a"), "steps=10", "seed=3"]
    (tmp_path / "a").mkdir()
    assert plan.command()[-1] == "--resume-if-present"
    assert sweep.config_args(None, "c.yaml") == ["--config", "c.yaml"] and sweep.config_args(None, None) == []


def test_finished_runs_are_skipped(tmp_path):
    done = tmp_path / "done"
    done.mkdir()
    (done / "summary.json").write_text(json.dumps({"steps": 7}))
    assert runlog.finished(done, 7) and not runlog.finished(done, 8)
    assert runlog.read_summary(Path(tmp_path / "missing")) == {}
    msgs = []
    failures = sweep.run([sweep.RunPlan("done", done, 7)], jobs=2, say=msgs.append)
    assert failures == {} and msgs == ["training 0 runs (1 already finished), 2 at a time"]


# -- threads, progress and resumed runs (issue 15 item 1) --------------------------------------------------
ENV_PROBE = (
    "import os; print('OMP', os.environ.get('OMP_NUM_THREADS'), 'MKL', os.environ.get('MKL_NUM_THREADS'))"
)


def _probe_children(monkeypatch, cores=8):
    """Make every planned run a child that prints its thread variables into its train.log, on an 8-core machine."""
    monkeypatch.setattr(sweep.RunPlan, "command", lambda self: [sys.executable, "-c", ENV_PROBE])
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)), raising=False)


def _child_env(run: Path) -> str:
    return (run / "train.log").read_text().strip().splitlines()[-1]


def test_the_child_keeps_an_exported_thread_setting(tmp_path, monkeypatch):
    """With OMP_NUM_THREADS=1 exported, compare's child ran with 2 threads (cores / jobs) on the issue's machine."""
    _probe_children(monkeypatch)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    msgs = []
    assert sweep.run([sweep.RunPlan("a", tmp_path / "a", 5)], jobs=1, say=msgs.append) == {}
    assert _child_env(tmp_path / "a") == "OMP 1 MKL 1"  # the unset one follows the exported one
    assert "CPU threads per run: 1 (OMP_NUM_THREADS exported)" in msgs


def test_threads_overrides_both_variables_and_the_default_shares_the_cores(tmp_path, monkeypatch):
    _probe_children(monkeypatch)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    sweep.run([sweep.RunPlan("a", tmp_path / "a", 5)], jobs=1, threads=3, say=lambda m: None)
    assert _child_env(tmp_path / "a") == "OMP 3 MKL 3"
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.delenv("MKL_NUM_THREADS")
    plans = [sweep.RunPlan(x, tmp_path / x, 5) for x in ("b", "c")]
    sweep.run(plans, jobs=2, say=lambda m: None)
    assert _child_env(tmp_path / "b") == _child_env(tmp_path / "c") == "OMP 4 MKL 4"  # 8 cores / 2 runs


def test_compare_threads_option_reaches_the_child(tmp_path, monkeypatch, capsys):
    from diffusion_curriculum.cli import main

    _probe_children(monkeypatch)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    out = tmp_path / "c"
    argv = ["compare", "--methods", "uniform", "--seeds", "1", "--steps", "5", "--out", str(out)]
    assert main([*argv, "--threads", "2", "--progress-every", "0"]) == 0
    assert _child_env(out / "runs" / "uniform" / "seed0") == "OMP 2 MKL 2"
    assert main([*argv, "--threads", "0"]) == 2
    assert "--threads 0 is invalid" in capsys.readouterr().err


def test_progress_lines_report_step_loss_speed_and_eta(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    plan = sweep.RunPlan("uniform seed 0", run, 100)
    progress = sweep._Progress([plan], (msgs := []).append, every=0)
    progress.poll()
    assert msgs == []  # nothing logged yet
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 20, "loss": 0.5, "steps_per_s": 4.0}) + "\n")
        f.write(json.dumps({"step": 20, "eval_loss": 0.4}) + "\n")
    progress.poll()
    assert msgs == ["uniform seed 0: step 20/100 (20 %), loss 0.5, 4 steps/s, ETA 20 s"]
    progress.poll()
    assert len(msgs) == 1  # said once per new record


def test_a_resumed_run_says_so_and_reports_progress_as_it_goes(tmp_path):
    from conftest import TINY

    run = tmp_path / "r"
    over = (*TINY, "steps=20", "log_every=2", "checkpoint_every=10")
    assert sweep.run([sweep.RunPlan("r", run, 20, overrides=over)], jobs=1, say=(first := []).append) == {}
    assert "r: started" in first
    msgs = []
    plan = sweep.RunPlan("r", run, 80, overrides=(*over, "steps=80"))
    assert sweep.run([plan], jobs=1, say=msgs.append, progress_every=0.2) == {}
    assert "r: resumed at step 20" in msgs
    progress = [m for m in msgs if m.startswith("r: step ")]
    assert progress and all("/80 (" in m and "steps/s, ETA" in m for m in progress), msgs
    assert runlog.finished(run, 80)


def test_sigterm_to_compare_saves_every_run_and_exits_130(tmp_path):
    """SIGTERM used to end compare at once, its runs left training on their own."""
    import os
    import signal
    import subprocess
    import time

    from conftest import TINY

    out = tmp_path / "c"
    cmd = [sys.executable, "-m", "diffusion_curriculum", "compare", "--methods", "uniform", "--seeds", "1"]
    cmd += ["--steps", "3000", "--jobs", "1", "--out", str(out), *TINY, "log_every=2", "checkpoint_every=0"]
    p = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    run = out / "runs" / "uniform" / "seed0"
    try:
        deadline = time.time() + 60
        while not runlog.read_metrics(run / "metrics.jsonl") and time.time() < deadline:
            time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130, err
    assert "stopped by SIGTERM" in err
    log = (run / "train.log").read_text()
    assert "(SIGTERM); saved" in log and list((run / "checkpoints").glob("step_*"))
    assert not runlog.finished(run, 3000)


def test_a_runs_done_line_gives_its_own_time_not_the_sweeps(tmp_path):
    """A run that started 100 s into a sweep and ended at 130 s reports 30 s (it used to report 130)."""
    import os
    import time

    run = tmp_path / "b"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    now = time.time()
    os.utime(run / "config.yaml", (now - 30, now - 30))
    msgs: list[str] = []
    sweep._collect([(sweep.RunPlan("b", run, 5), None)], 1, msgs.append, t0=now - 130)
    (line,) = msgs
    took = int(line.rsplit("(", 1)[1].split()[0])
    assert line.startswith("[1/1] b: done (") and 29 <= took <= 32, line


def test_no_progress_line_after_a_runs_done_line(tmp_path):
    """The watcher polls on its own thread: once _collect has reported a run, the watcher says nothing more of
    it, even when the run's last record is read only afterwards."""
    run = tmp_path / "r"
    run.mkdir()
    plan = sweep.RunPlan("uniform seed 0", run, 100)
    msgs: list[str] = []
    progress = sweep._Progress([plan], msgs.append, every=0)
    sweep._collect([(plan, None)], 1, msgs.append, on_end=progress.ended)
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 100, "loss": 0.5, "steps_per_s": 4.0}) + "\n")
    progress.poll()
    assert len(msgs) == 1 and msgs[0].startswith("[1/1] uniform seed 0: done")
