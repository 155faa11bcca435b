#!/usr/bin/env bash
# Reproduces experiments/augmentation/ (see README.md there): the study, then results.csv, results.md
# and the figure here. Run it from a checkout nobody edits meanwhile (e.g. a git worktree).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-experiments/augmentation/runs}  # summaries kept in git: a rerun resumes
export OMP_NUM_THREADS=1 WANDB_MODE=disabled
python experiments/augmentation/study.py "$out" "${@:2}"
python experiments/augmentation/collect.py "$out"
