#!/bin/bash
# Rebuild a grid's finished runs from committed result files, so that running the grid again on a fresh machine
# trains only what is missing (compare skips a run whose summary.json reports the planned steps):
#
#   benchmarks/restore_runs.sh benchmarks/results/digits-noise/lin /path/to/out/lin
#
# copies each benchmarks/results/<name>/<group>/<method>/seed<k>/ into OUT/runs/<method>/seed<k>/, leaving any
# run already there untouched. The copies have no checkpoints: their curves are the committed evaluation files,
# which benchmarks/ablation_table.py --collect copies back unchanged.
set -eu
SRC=$1
OUT=$2
for run in "$SRC"/*/seed*; do
  [ -d "$run" ] || continue
  dest="$OUT/runs/$(basename "$(dirname "$run")")/$(basename "$run")"
  if [ -e "$dest" ]; then echo "kept     $dest"; continue; fi
  mkdir -p "$dest"
  cp -p "$run"/* "$dest"/
  echo "restored $dest"
done
