#!/usr/bin/env bash
# Reproduces experiments/scaling/: throughput against world size for non-private training, DP
# with bk, and DP with Opacus hooks. Measured on 1 and 2 CPU processes (one thread each, gloo,
# `python run.py trainer=ddp_cpu`), each job repeated 3 times with the method order rotated;
# then the step-time model (experiments/scaling/step_time.py) is checked against the
# measurements and projected to 80 GPUs under the assumptions in assumptions.json. ~7 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
python -m experiments.scaling.study --out experiments/scaling --worlds 1 2 --rounds 3 "$@"
