"""compare --launcher: the choice and its errors, submitit-local end to end, the Slurm parameters and job flow
(with a stand-in executor), GPU round-robin placement without a GPU, and --summarize-only."""

import contextlib
import os
import sys

import pytest

from conftest import TINY
from diffusion_curriculum import compare, launchers, runlog, sweep
from diffusion_curriculum.cli import main
from diffusion_curriculum.errors import ConfigError

submitit = pytest.importorskip("submitit")
from diffusion_curriculum import submitit_jobs  # noqa: E402


@pytest.fixture(autouse=True)
def fake_slurm(tmp_path_factory, monkeypatch):
    """``sbatch`` and ``srun`` on the PATH, as on a cluster's login node (they are never run here)."""
    bin_dir = tmp_path_factory.mktemp("slurm-bin")
    for name in ("sbatch", "srun"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return bin_dir


def test_slurm_off_a_cluster_is_one_sentence(monkeypatch, fake_slurm):
    monkeypatch.setenv("PATH", os.environ["PATH"].replace(f"{fake_slurm}:", ""))
    with pytest.raises(ConfigError, match="needs Slurm's sbatch and srun, not found on this machine's PATH"):
        launchers.make("slurm")


def test_launcher_choice_and_its_errors(monkeypatch):
    assert isinstance(launchers.make(), launchers.Processes)
    assert isinstance(launchers.make("submitit-local"), submitit_jobs.SubmititLocal)
    slurm = launchers.make("slurm")
    assert isinstance(slurm, submitit_jobs.Slurm) and slurm.waits and slurm.gpus_per_run == 1
    with pytest.raises(
        ConfigError, match="'slurn' is not known \\(did you mean 'slurm'\\?\\); allowed: processes"
    ):
        launchers.make("slurn")
    with pytest.raises(ConfigError, match="--slurm-partition, --no-wait only apply to --launcher slurm"):
        launchers.make("processes", partition="gpu", wait=False)
    with pytest.raises(ConfigError, match="--slurm-gpus-per-run 2 is invalid; allowed: 0 or 1"):
        launchers.make("slurm", gpus_per_run=2)
    with pytest.raises(ConfigError, match="--slurm-time '1:xx' is invalid"):
        launchers.make("slurm", time="1:xx")
    with pytest.raises(
        ConfigError,
        match="'cpus_per_tsk' is not a parameter of submitit's SlurmExecutor \\(did you mean 'cpus_per_task'",
    ):
        launchers.make("slurm", extra=["cpus_per_tsk=8"])
    with pytest.raises(ConfigError, match="must look like KEY=VALUE"):
        launchers.make("slurm", extra=["cpus_per_task"])
    with pytest.raises(ConfigError, match="set partition with --slurm-partition"):
        launchers.make("slurm", extra=["partition=gpu"])
    with pytest.raises(ConfigError, match="--threads 0 is invalid"):
        launchers.make(threads=0)
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if it were not installed
    with pytest.raises(
        ConfigError,
        match=r"needs submitit, which is not installed; install it with pip install 'diffusion-curriculum\[submitit\]'",
    ):
        launchers.make("submitit-local")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--launcher", "ray"], "--launcher 'ray' is not known"),
        (["--slurm-time", "60"], "--slurm-time only apply to --launcher slurm"),
        (["--launcher", "submitit-local", "--no-wait"], "--no-wait only apply to --launcher slurm"),
        (["--launcher", "slurm", "--slurm-extra", "bogus=1"], "'bogus' is not a parameter"),
    ],
)
def test_bad_launcher_options_are_one_sentence_and_exit_2(tmp_path, capsys, argv, message):
    out = tmp_path / "c"
    assert main(["compare", "--methods", "uniform", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not out.exists()


def test_missing_submitit_is_one_sentence_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)
    assert main(["compare", "--methods", "uniform", "--out", str(tmp_path), "--launcher", "slurm"]) == 2
    assert "pip install 'diffusion-curriculum[submitit]'" in capsys.readouterr().err


def test_slurm_minutes():
    assert submitit_jobs.slurm_minutes(90) == 90
    assert submitit_jobs.slurm_minutes("30:30") == 31  # MM:SS, seconds round up
    assert submitit_jobs.slurm_minutes("2:00:00") == 120
    assert submitit_jobs.slurm_minutes("1-12") == 2160
    assert submitit_jobs.slurm_minutes("1-00:30:00") == 1470
    for bad in ("", "0", "-5", "1:2:3:4", "two hours"):
        with pytest.raises(ConfigError, match="--slurm-time"):
            submitit_jobs.slurm_minutes(bad)


def test_slurm_options_reach_the_sbatch_script(tmp_path):
    slurm = launchers.make(
        "slurm", partition="gpu", time="2:00:00", extra=["cpus_per_task=8", "account=proj", "mem=32G"]
    )
    ex = slurm.executor(tmp_path, jobs=2)
    script = ex._make_submission_file_text("python -m x", "uid")
    for line in (
        "--partition=gpu",
        "--gpus-per-node=1",
        "--time=120",
        "--cpus-per-task=8",
        "--account=proj",
        "--mem=32G",
    ):
        assert line in script, line
    assert ex.parameters["array_parallelism"] == 2  # at most --jobs of the job array run at once
    assert "--gpus-per-node" not in launchers.make("slurm", gpus_per_run=0).executor(
        tmp_path
    )._make_submission_file_text("x", "u")


class _FakeJob:
    def __init__(self, job_id, result):
        self.job_id, self._result = job_id, result

    def done(self):
        return True

    def result(self):
        if isinstance(self._result, Exception):
            raise self._result
        return self._result


class _FakeExecutor:
    """Stands in for a SlurmExecutor: records the submissions, hands out job ids 101, 102, ..."""

    def __init__(self, results):
        self.results, self.submitted = list(results), []

    @contextlib.contextmanager
    def batch(self):
        yield

    def submit(self, fn, plan, *args):
        self.submitted.append((fn, plan, args))
        return _FakeJob(str(100 + len(self.submitted)), self.results[len(self.submitted) - 1])


def test_slurm_submits_prints_job_ids_and_the_summarize_command(tmp_path, monkeypatch, capsys):
    fake = _FakeExecutor([None, None])
    monkeypatch.setattr(submitit_jobs.Slurm, "executor", lambda self, folder, jobs=None: fake)
    out = tmp_path / "c"
    argv = ["compare", "--methods", "uniform,logit-normal", "--seeds", "1", "--steps", "5", "--out", str(out)]
    argv += ["--launcher", "slurm", "--slurm-partition", "gpu", "--no-wait", "--jobs", "4", *TINY]
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert "uniform seed 0: slurm job 101 submitted (started when it runs)" in cap.err
    assert "logit-normal seed 0: slurm job 102 submitted" in cap.err
    hint = cap.out.strip().splitlines()[-1].strip()
    assert hint.startswith("diffusion-curriculum compare --methods uniform,logit-normal") and hint.endswith(
        "--summarize-only"
    )
    assert (
        "--launcher" not in hint
        and "--slurm" not in hint
        and "--no-wait" not in hint
        and "--jobs" not in hint
    )
    assert "steps=30" in hint  # the settings that decide the runs stay
    assert [fn for fn, _, _ in fake.submitted] == [launchers.run_job, launchers.run_job]
    assert [p.label for _, p, _ in fake.submitted] == ["uniform seed 0", "logit-normal seed 0"]


def test_slurm_waits_and_reports_each_job(tmp_path, monkeypatch):
    fake = _FakeExecutor([None, RuntimeError("job 102 was cancelled\nmore text")])
    monkeypatch.setattr(submitit_jobs.Slurm, "executor", lambda self, folder, jobs=None: fake)
    plans = [sweep.RunPlan(x, tmp_path / x, 5) for x in ("a", "b")]
    msgs = []
    failures = sweep.run(plans, say=msgs.append, launcher=launchers.make("slurm"), progress_every=0)
    assert failures == {"b": "slurm job 102 failed: job 102 was cancelled"}
    assert "[1/2] a: done (0 s)" in msgs and any(m.startswith("[2/2] b: FAILED (slurm job 102") for m in msgs)


def test_gpu_round_robin_placement_without_a_gpu(tmp_path, monkeypatch):
    import torch

    parsed = [compare.parse_method(m) for m in ("uniform", "clts")]
    plans, _ = compare._plan_runs(parsed, tmp_path, 2, None, None, [], 5)
    assert [p.device for p in plans] == ["auto"] * 4
    placed = launchers.place_on_gpus(plans, 3)
    assert [p.overrides[-1] for p in placed] == [
        "device=cuda:0",
        "device=cuda:1",
        "device=cuda:2",
        "device=cuda:0",
    ]
    assert "device=cuda:1" in placed[1].command()
    assert launchers.place_on_gpus(plans, 1) == plans  # one GPU: device=auto picks it
    cpu = sweep.RunPlan("cpu", tmp_path / "x", 5, device="cpu")
    named = sweep.RunPlan("named", tmp_path / "y", 5, overrides=("device=cuda:3",), device=None)
    assert launchers.place_on_gpus([cpu, named, plans[0]], 2) == [cpu, named, placed[0]]
    # a device on the command line is the user's choice: nothing is placed
    explicit, _ = compare._plan_runs(parsed, tmp_path, 1, None, None, ["device=cuda"], 5)
    assert all(p.device is None for p in explicit)
    # the processes launcher plans with the GPUs torch sees, and runs one per GPU at a time by default
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    proc = launchers.Processes()
    assert [p.overrides[-1] for p in proc.prepare(plans)] == ["device=cuda:0", "device=cuda:1"] * 2
    assert proc.default_jobs(plans) == 2 and proc.default_jobs(explicit) == launchers.cores()


def test_submitit_local_end_to_end_then_summarize_only(tmp_path, capsys):
    out = tmp_path / "cmp"
    common = dict(out=out, seeds=1, steps=10, overrides=TINY + ["eval_every=5"], jobs=2, progress_every=0)
    msgs = []
    res = compare.compare(
        ["uniform", "logit-normal"], launcher=launchers.make("submitit-local"), log=msgs.append, **common
    )
    assert msgs[0] == "compare: 2 runs (0 already finished), 2 at a time (submitit-local jobs)"
    assert any(m.startswith("uniform seed 0: job ") and m.endswith(", started") for m in msgs), msgs
    assert res["methods"]["uniform"]["speedup_per_seed"] == [pytest.approx(1.0)]
    for method in ("uniform", "logit-normal"):
        run = out / "runs" / method / "seed0"
        assert runlog.finished(run, 10) and (run / "train.log").is_file()  # the job trained it in place
    assert list((out / "jobs").iterdir())  # submitit's job files, beside the runs
    assert not (out / "jobs" / "%j").exists()  # not the empty folder named after submitit's pattern
    # a rerun retrains nothing
    again = []
    compare.compare(
        ["uniform", "logit-normal"], launcher=launchers.make("submitit-local"), log=again.append, **common
    )
    assert again[0].startswith("compare: 2 runs (2 already finished)")
    # the summary step alone, from what is on disk
    argv = [
        "compare",
        "--methods",
        "uniform,logit-normal",
        "--seeds",
        "1",
        "--steps",
        "10",
        "--out",
        str(out),
    ]
    argv += [*TINY, "eval_every=5"]
    capsys.readouterr()
    assert main([*argv, "--summarize-only"]) == 0
    cap = capsys.readouterr()
    assert "| logit-normal |" in cap.out and "2 of 2 runs finished" in cap.err
    # one run unfinished (its summary gone), one missing (a seed never trained): named, exit 1, table still built
    (out / "runs" / "logit-normal" / "seed0" / "summary.json").unlink()
    assert main([*argv[:4], "2", *argv[5:], "--summarize-only"]) == 1
    cap = capsys.readouterr()
    assert "1 of 4 runs finished" in cap.err
    assert "logit-normal seed 0: unfinished (checkpoint at step 10 of 10)" in cap.err
    assert "uniform seed 1: missing (not trained yet)" in cap.err
    assert "some runs are missing or unfinished (uniform, logit-normal)" in cap.err
    assert "| uniform |" in cap.out
    assert not (out / "runs" / "uniform" / "seed1").exists()  # nothing was trained
