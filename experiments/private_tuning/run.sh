#!/usr/bin/env bash
# Reproduces experiments/private_tuning/: how much accuracy does honest tuning cost?
# For digits and mnist1d at TOTAL epsilon 1, 2, 4, 8 and seeds 0-2:
#   private   a private selection (hparams_search=private_lr_vs_clip: K ~ geometric, mean 10,
#             random search over lr x clip, noisy validation score): the winner at the WHOLE
#             sweep's epsilon;
#   (a)       the same sweep's best trial by EXACT validation accuracy, at its per-trial
#             epsilon (today's practice, which does not account the choice);
#   (b)       one run with the experiment's default hyperparameters at the same total epsilon.
# 10 epochs per run (not the experiments' 30) to fit the study on 2 CPU cores; the two datasets
# run side by side, one core (one torch thread) each.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-/tmp/dpresearch-private-tuning}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=disabled
common=(logger=none extras.print_config=false trainer.enable_progress_bar=false
        trainer.max_epochs=10)
space=("hydra.sweeper.params.lr.low=1e-3" "hydra.sweeper.params.lr.high=0.1"
       "hydra.sweeper.params.clip.low=0.1" "hydra.sweeper.params.clip.high=10")
study() {  # one dataset: 12 private sweeps, then the 12 default runs
  local exp=$1
  for eps in 1 2 4 8; do
    for seed in 0 1 2; do
      python run.py -m hparams_search=private_lr_vs_clip +experiment=$exp "${common[@]}" \
        "${space[@]}" privacy.target_epsilon=$eps seed=$seed hydra.sweeper.sampler.seed=$seed \
        hydra.sweeper.study_name=${exp}_eps${eps}_seed${seed} \
        hydra.sweep.dir=$out/$exp/private/eps${eps}_seed${seed} > $out/$exp.eps${eps}_seed${seed}.log 2>&1
    done
  done
  python run.py -m +experiment=$exp "${common[@]}" privacy.target_epsilon=1,2,4,8 seed=0,1,2 \
    hydra.sweep.dir=$out/$exp/default > $out/$exp.default.log 2>&1
}
mkdir -p $out
study digits_dp &
study mnist1d_dp &
wait
python experiments/private_tuning/collect.py $out
