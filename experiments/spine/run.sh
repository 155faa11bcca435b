#!/usr/bin/env bash
# Reproduces experiments/spine/: the shipped offline experiments, one process each, seed 0.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-/tmp/dpresearch-spine}
for exp in digits_dp digits_nonprivate mnist1d_dp; do
  python run.py +experiment=$exp logger=csv extras.print_config=false trainer.enable_progress_bar=false \
    hydra.run.dir=$out/$exp
done
python experiments/spine/collect.py $out/digits_dp $out/digits_nonprivate $out/mnist1d_dp
