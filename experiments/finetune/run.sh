#!/usr/bin/env bash
# Reproduces experiments/finetune/: DP fine-tuning of the real pretrained all-MiniLM-L6-v2
# under three scopes (offline smoke task), the scope x method benchmark in ONE process, and the
# parameter fractions each scope trains.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-/tmp/dpresearch-finetune}
export HF_HUB_OFFLINE=1
for scope in full lora bias_only; do
  python run.py +experiment=minilm_sentiment_${scope}_dp logger=csv extras.print_config=false \
    trainer.enable_progress_bar=false hydra.run.dir=$out/$scope
done
python -m dpresearch.benchmark model=minilm dataset=sentiment_templates dataset.max_length=128 \
  'bench.methods=[nonprivate,dp_bk]' 'bench.scopes=[full,lora,bias_only]' bench.batch_size=32 \
  bench.steps=10 bench.warmup=2 sampler.max_physical_batch_size=32 \
  bench.output=experiments/finetune/raw/minilm.json hydra.run.dir=$out/bench
python experiments/finetune/bias_fraction.py
python experiments/finetune/collect.py experiments/finetune/raw/minilm.json $out/full $out/lora $out/bias_only
