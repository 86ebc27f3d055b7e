"""What reading the losses 4-7 steps late (issue 26's observation lag) changed on digits: the rows that decided
the defaults of loss-second-moment, learning-progress and ddc (linear beta, 4000 steps, FD@1000 every 500, 3
seeds), before (benchmarks/results/digits-ablation/lin) and after (benchmarks/results/digits-lag/lin), with the
speed-ups against the committed uniform curves. Rebuilds the BENCHMARKS.md table from the committed files:

    python benchmarks/lag_effect.py
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from diffusion_curriculum.compare import speedup  # noqa: E402

BEFORE = ROOT / "benchmarks/results/digits-ablation/lin"
AFTER = ROOT / "benchmarks/results/digits-lag/lin"
#: the method as run now -> its row in the earlier ablation (the same settings: today's defaults)
ROWS = {
    "loss-second-moment": "loss-second-moment",
    "learning-progress": "learning-progress_progress=absolute",
    "ddc": "ddc_curriculum_fraction=0.25",
}


def curve(path: Path) -> list[tuple[int, float]] | None:
    if not path.is_file():
        return None
    return [(r["step"], r["fd"]) for r in map(json.loads, path.read_text().splitlines())]


def fmt(u) -> str:
    return f"{u:.2f}" if isinstance(u, float) else "n.r."


def main() -> None:
    print(
        "| method | seed | final FD before | after | FD@1000 before / after | speed-up vs uniform before | after |"
    )
    print("|---|---|---|---|---|---|---|")
    notes = []
    for new, old in ROWS.items():
        before, after = [], []
        for s in range(3):
            base = curve(BEFORE / "uniform" / f"seed{s}" / "eval-n1000.jsonl")
            a = curve(BEFORE / old / f"seed{s}" / "eval-n1000.jsonl")
            b = curve(AFTER / new / f"seed{s}" / "eval-n1000.jsonl")
            if a is None or b is None:
                continue
            before.append(a[-1][1])
            after.append(b[-1][1])
            ua, ub = speedup(base, a)["speedup"], speedup(base, b)["speedup"]
            print(
                f"| {new} | {s} | {a[-1][1]:.2f} | {b[-1][1]:.2f} | {a[1][1]:.2f} / {b[1][1]:.2f} | {fmt(ua)} | {fmt(ub)} |"
            )
        if len(after) > 1:
            d = [y - x for x, y in zip(before, after)]
            notes.append(
                f"- {new}: final FD {statistics.fmean(before):.2f} ± {statistics.stdev(before):.2f} before, "
                f"{statistics.fmean(after):.2f} ± {statistics.stdev(after):.2f} after; paired change "
                f"{statistics.fmean(d):+.2f} (per seed {', '.join(f'{x:+.2f}' for x in d)})"
            )
    print()
    print("\n".join(notes))


if __name__ == "__main__":
    main()
