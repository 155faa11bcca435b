#!/usr/bin/env bash
# Reproduces experiments/sweeps/: does automatic clipping turn the 2-D search into a 1-D one?
# digits under DP (epsilon 3), SGD, 15 epochs: fixed clipping over a 5x5 grid of learning rate x
# clipping threshold against automatic clipping over the 5 learning rates alone.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-/tmp/dpresearch-sweeps}
common=(+experiment=digits_dp optimizer=sgd trainer.max_epochs=15 logger=none extras.print_config=false
        trainer.enable_progress_bar=false)
python run.py -m hparams_search=lr_vs_clip_grid clipping=fixed "${common[@]}" \
  hydra.sweeper.study_name=fixed hydra.sweep.dir=$out/fixed
python run.py -m hparams_search=lr_grid clipping=automatic "${common[@]}" \
  hydra.sweeper.study_name=automatic hydra.sweep.dir=$out/automatic
python experiments/sweeps/collect.py $out/fixed $out/automatic
cp $out/fixed/trials.csv experiments/sweeps/trials_fixed.csv
cp $out/automatic/trials.csv experiments/sweeps/trials_automatic.csv
