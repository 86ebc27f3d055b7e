"""Reading back what a run directory holds, for the tools that look at runs from outside (compare, the sweep,
the analyses, the offline evaluation): the records of ``metrics.jsonl`` (:func:`read_metrics`, from the run
directory's owner :mod:`diffusion_curriculum.training.rundir`) and ``summary.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .training.rundir import CHECKPOINTS, SUMMARY, read_metrics

__all__ = ["finished", "newest_checkpoint_step", "read_metrics", "read_summary"]


def read_summary(run: str | os.PathLike) -> dict:
    """The run's ``summary.json`` (written when training ends), or ``{}`` when it is missing or unreadable."""
    try:
        summary = json.loads((Path(run) / SUMMARY).read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def finished(run: str | os.PathLike, steps: int) -> bool:
    """Whether the run's summary reports exactly ``steps`` steps (a finished run of that length)."""
    return read_summary(run).get("steps") == steps


def newest_checkpoint_step(run: str | os.PathLike) -> int | None:
    """The step of the run's newest checkpoint directory (``checkpoints/step_N``), or ``None`` when it has none."""
    from .checkpoint import list_checkpoints

    ckpts = list_checkpoints(Path(run) / CHECKPOINTS)
    return int(ckpts[0].name.rsplit("_", 1)[1]) if ckpts else None
