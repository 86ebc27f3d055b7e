#!/bin/bash
# Run a benchmark grid in the background, resumably: one `compare` per line of GRID, each into OUT/GROUP
# (from the repository root: the grids name config files by their path from there).
#
#   benchmarks/grid.sh benchmarks/grids/digits-flow.txt /path/to/out  >> grid.log 2>&1 &
#
# A line is "GROUP SEEDS METHODS [compare arguments ...]" ('#' starts a comment). compare skips finished runs and
# resumes unfinished ones, so running the same grid again continues it. One thread per run, two runs at a time
# (a 2-thread torch process on a 2-core machine collapses as soon as another one runs). Lines after the one
# being run may be changed while the grid runs, in place (e.g. `cat new > GRID`, not an editor that writes a new
# file), as long as the lines before them keep their bytes. PYTHON (default: .venv/bin/python) and PYTHONPATH (default: this
# checkout's src) choose the code; set PYTHONPATH to a frozen worktree to keep editing this one. JOBS (default 2)
# is how many runs at a time: JOBS=1 lets two grids share the two cores.
# On a fresh machine, `benchmarks/ablation_table.py --restore` first rebuilds the finished runs from results/.
set -u
GRID=$1
OUT=$2
HERE=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$HERE/.venv/bin/python}
JOBS=${JOBS:-2}
export PYTHONPATH=${PYTHONPATH:-$HERE/src} OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
while read -r group seeds methods rest; do
  [ -z "${group:-}" ] && continue
  case "$group" in \#*) continue;; esac
  echo "=== $(date +%H:%M:%S) $group seeds=$seeds: $methods $rest"
  # shellcheck disable=SC2086  # $rest is the line's compare arguments, split on spaces on purpose
  "$PYTHON" -m diffusion_curriculum compare --methods "$methods" --seeds "$seeds" --jobs "$JOBS" --progress-every 600 \
    --out "$OUT/$group" $rest </dev/null 2>&1 | grep --line-buffered -v "^evaluating"
  status=${PIPESTATUS[0]}
  [ "$status" -ne 0 ] && echo "=== $(date +%H:%M:%S) $group: compare exited $status"
done < "$GRID"
echo "=== $(date +%H:%M:%S) grid done"
