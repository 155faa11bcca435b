#!/usr/bin/env bash
# Reproduces experiments/audit/: the one-run privacy audit (python -m dpresearch.audit) of the
# default experiment (digits_dp, epsilon 3, 30 epochs) and of deliberately broken runs that
# claim epsilon 1 (noise switched off; canaries left unclipped), plus the same correct run
# claiming epsilon 1: 1,000 white-box gradient canaries each. Then input canaries (300
# mislabeled examples, black-box) on the default run and on the noiseless one. ~2 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=experiments/audit/raw
mkdir -p "$out"
export WANDB_MODE=${WANDB_MODE:-disabled}
audit() {  # name, overrides...
  local name=$1; shift
  python -m dpresearch.audit logger=csv trainer.enable_progress_bar=false \
    audit.output="$out/$name.json" hydra.run.dir="/tmp/dpresearch-audit/$name" "$@"
}
audit default +experiment=digits_dp
audit claim1 +experiment=digits_dp privacy.target_epsilon=1
audit broken_noise +experiment=digits_dp privacy.target_epsilon=1 audit.sabotage=noise
audit broken_clipping +experiment=digits_dp privacy.target_epsilon=1 audit.sabotage=clipping
audit input_default +experiment=digits_dp audit.kind=input audit.canaries=300
audit input_broken_noise +experiment=digits_dp privacy.target_epsilon=1 audit.kind=input \
  audit.canaries=300 audit.sabotage=noise
python experiments/audit/collect.py "$out"/*.json
