#!/usr/bin/env bash
# Reproduces experiments/engines/: DP engines against non-private training, each workload in
# ONE process with the methods interleaved round by round (python -m dpresearch.benchmark).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-experiments/engines/raw}
mkdir -p "$out"
bench() {  # name, overrides...
  local name=$1; shift
  python -m dpresearch.benchmark "$@" bench.output="$out/$name.json" hydra.run.dir=/tmp/dpresearch-bench/$name
}
# The reference workload: vit_micro at CIFAR-10's shape, batch 64, fp32.
bench vit_micro model=vit_micro dataset=cifar10 bench.batch_size=64 bench.steps=20 bench.warmup=3
# Automatic clipping costs the same as fixed: only the per-example factors differ.
bench vit_micro_automatic model=vit_micro dataset=cifar10 clipping=automatic \
  bench.methods=[nonprivate,dp_bk] bench.batch_size=64 bench.steps=20 bench.warmup=3
# Convolutions with many positions per example (WRN-16-4, GroupNorm).
bench wrn16_4 model=wrn16_4 dataset=cifar10 bench.batch_size=64 bench.steps=8 bench.warmup=2
# The default small CNN on digits (8x8): tiny layers, where per-step overhead dominates.
bench small_cnn model=small_cnn dataset=digits bench.batch_size=256 bench.steps=30 bench.warmup=3
python experiments/engines/collect.py "$out"/*.json
