"""The papers' analyses as tools (``diffusion-curriculum analyze``; docs/methods.md, "Analyses").

- :mod:`.entropy`: relative entropy between consecutive noised marginals, D_KL(p_{t−1} ‖ p_t)
  (Kim et al. 2024, arXiv 2403.10348).
- :mod:`.difficulty`: convergence speed of the denoising task per timestep interval (same paper).
- :mod:`.consistency`: do two independently trained models map the same noise to the same sample
  (Xu et al. 2024, arXiv 2404.07946)?

Each writes a table (CSV + JSON) and a plot (PNG) into an output folder.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..checks import atomic_write


def write_table(out: Path, name: str, rows: list[dict[str, Any]], meta: dict[str, Any] | None = None) -> None:
    """Write ``rows`` (dicts sharing keys) as ``<name>.csv`` and, with ``meta``, as ``<name>.json``."""
    out.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    f = io.StringIO(newline="")
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
    atomic_write(out / f"{name}.csv", f.getvalue())
    atomic_write(out / f"{name}.json", json.dumps({**(meta or {}), "rows": rows}, indent=2))
