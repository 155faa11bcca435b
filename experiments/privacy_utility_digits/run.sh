#!/usr/bin/env bash
# Reproduces experiments/privacy_utility_digits/: accuracy against epsilon on digits (GroupNorm
# CNN, Poisson sampling, 30 epochs) for fixed vs automatic clipping, target epsilon in
# {0.5, 1, 2, 4, 8} plus non-private training (epsilon = inf), three seeds each; then the
# offline report over all runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-/tmp/dpresearch-privacy-utility}
common=(+experiment=digits_dp name=privacy_utility_digits logger=csv extras.print_config=false
        trainer.enable_progress_bar=false)
python run.py -m "${common[@]}" clipping=fixed,automatic privacy.target_epsilon=0.5,1,2,4,8 \
  seed=0,1,2 hydra.sweep.dir=$out/dp
python run.py -m "${common[@]}" privacy=none seed=0,1,2 hydra.sweep.dir=$out/nonprivate
python -m dpresearch.report $out/dp $out/nonprivate --out experiments/privacy_utility_digits/report
