#!/usr/bin/env bash
# Reproduces experiments/accounting_check/: the reported epsilon on a grid of 150
# (q, sigma, steps, delta) cases against dp-accounting's PLD interval (optimistic and
# pessimistic discretization) and, at q=1, the exact Gaussian composition. About 15 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
python experiments/accounting_check/check.py experiments/accounting_check
