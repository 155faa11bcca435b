#!/usr/bin/env bash
# Reproduces experiments/self_check/: what the engine self-check costs before training
# (cost.csv), and the vmap engine's speed and memory beside the others, in one process per
# workload (raw/*.json, vmap.csv). Run alone: other load distorts the timings.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=experiments/self_check
python experiments/self_check/cost.py digits_dp minilm_sentiment_full_dp cifar10_wrn_dp \
  --out "$out/cost.csv"
mkdir -p "$out/raw"
methods='bench.methods=[nonprivate,dp_hooks,dp_ghost,dp_bk,dp_vmap]'
python -m dpresearch.benchmark model=small_cnn dataset=digits "$methods" bench.batch_size=256 \
  bench.steps=20 bench.warmup=3 bench.output="$out/raw/small_cnn.json" \
  hydra.run.dir=/tmp/dpresearch-bench/self_check_small_cnn
python -m dpresearch.benchmark model=vit_micro dataset=cifar10 "$methods" bench.batch_size=64 \
  bench.steps=8 bench.warmup=2 bench.output="$out/raw/vit_micro.json" \
  hydra.run.dir=/tmp/dpresearch-bench/self_check_vit_micro
python experiments/engines/collect.py "$out"/raw/*.json --csv "$out/vmap.csv" --figure "$out/vmap.png"
