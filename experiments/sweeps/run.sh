#!/usr/bin/env bash
# Reproduces experiments/sweeps/: does automatic clipping turn the 2-D search into a 1-D one?
# digits under DP (epsilon 3), SGD, 15 epochs: fixed clipping over a 5x5 grid of learning rate x
# clipping threshold against automatic clipping over the 5 learning rates alone, and adaptive
# clipping (median quantile) over the same grid, C its initial threshold.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-/tmp/dpresearch-sweeps}
common=(+experiment=digits_dp optimizer=sgd trainer.max_epochs=15 logger=none extras.print_config=false
        trainer.enable_progress_bar=false)
python run.py -m hparams_search=lr_vs_clip_grid clipping=fixed "${common[@]}" \
  hydra.sweeper.study_name=fixed hydra.sweep.dir=$out/fixed
python run.py -m hparams_search=lr_grid clipping=automatic "${common[@]}" \
  hydra.sweeper.study_name=automatic hydra.sweep.dir=$out/automatic
# Adaptive clipping's threshold settles near the median norm (about 3 here), larger than the
# fixed grid's best C: its grid reaches down to lr 0.05 (40 runs).
python run.py -m hparams_search=lr_vs_clip_grid clipping=adaptive "${common[@]}" \
  "hydra.sweeper.params.lr.choices=[0.05,0.1,0.2,0.5,1.0,2.0,4.0,8.0]" hydra.sweeper.n_trials=40 \
  hydra.sweeper.study_name=adaptive hydra.sweep.dir=$out/adaptive
python experiments/sweeps/collect.py $out/fixed $out/automatic $out/adaptive
cp $out/fixed/trials.csv experiments/sweeps/trials_fixed.csv
cp $out/automatic/trials.csv experiments/sweeps/trials_automatic.csv
cp $out/adaptive/trials.csv experiments/sweeps/trials_adaptive.csv
