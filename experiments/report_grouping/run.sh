#!/usr/bin/env bash
# Reproduces experiments/report_grouping/: the runs a researcher actually has in one folder
# (the issue-17 case): a default 30-epoch run, an Optuna sweep of 3-epoch trials, a
# fast_dev_run and a 3-seed multirun, all digits_dp at target epsilon 3; then the report
# with its defaults, and with --include sweeps,debug. Before issue 17 the first four became one
# point "seeds: 5" at the mean of their epsilons.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-/tmp/dpresearch-report-grouping}
rm -rf "$out"
common=(logger=none extras.print_config=false trainer.enable_progress_bar=false)
python run.py "${common[@]}" hydra.run.dir=$out/default
python run.py -m hparams_search=lr_only hydra.sweeper.n_trials=3 trainer.max_epochs=3 \
  "${common[@]}" hydra.sweep.dir=$out/sweep
python run.py debug=fdr "${common[@]}" hydra.run.dir=$out/smoke
python run.py -m seed=0,1,2 trainer.max_epochs=10 "${common[@]}" hydra.sweep.dir=$out/seeds
python -m dpresearch.report $out --out experiments/report_grouping/report
python -m dpresearch.report $out --include sweeps,debug --out experiments/report_grouping/report_all
python experiments/report_grouping/collect.py experiments/report_grouping/report \
  experiments/report_grouping/report_all > experiments/report_grouping/points.md
