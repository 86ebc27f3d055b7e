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
