#!/usr/bin/env bash
# Reproduces experiments/user_level/ (see README.md there): the study, then results.csv, results.md
# and the figure here. Run it from a checkout nobody edits meanwhile (e.g. a git worktree).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-experiments/user_level/runs}  # summaries kept in git: a rerun resumes
export OMP_NUM_THREADS=1 WANDB_MODE=disabled
python experiments/user_level/study.py "$out" "${@:2}"
python experiments/user_level/collect.py "$out"
