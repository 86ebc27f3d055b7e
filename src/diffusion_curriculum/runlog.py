"""Reading back what a run directory holds: the records of ``metrics.jsonl`` and ``summary.json``.

For the tools that look at finished or running runs from outside (compare, the sweep, the analyses, the offline
evaluation); none of them writes here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["finished", "read_metrics", "read_summary"]


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a ``metrics.jsonl``; a torn or foreign line is skipped (a run may be writing the file)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            out.append(rec)
    return out


def read_summary(run: str | os.PathLike) -> dict:
    """The run's ``summary.json`` (written when training ends), or ``{}`` when it is missing or unreadable."""
    try:
        summary = json.loads((Path(run) / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def finished(run: str | os.PathLike, steps: int) -> bool:
    """Whether the run's summary reports exactly ``steps`` steps (a finished run of that length)."""
    return read_summary(run).get("steps") == steps
