#!/usr/bin/env bash
# Reproduces experiments/correlated_noise/: DP-SGD (independent noise) against BandMF and BLT at
# equal epsilon on digits and mnist1d, the two datasets side by side, one core (one torch thread)
# each (about 70 minutes on 2 CPU cores), then results.csv, results.md and the figure here.
# Run it from a checkout nobody edits meanwhile (e.g. a git worktree): every run imports the
# code as it is when it starts.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-experiments/correlated_noise/runs}  # summaries kept in git: a rerun resumes
mechanisms=${2:-independent,banded_mf,blt}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=disabled
mkdir -p "$out"
python experiments/correlated_noise/study.py digits_dp "$out" --mechanisms "$mechanisms" \
  > "$out/digits_dp.log" 2>&1 &
python experiments/correlated_noise/study.py mnist1d_dp "$out" --mechanisms "$mechanisms" \
  > "$out/mnist1d_dp.log" 2>&1 &
wait
python experiments/correlated_noise/collect.py "$out"
