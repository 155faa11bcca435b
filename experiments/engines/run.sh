#!/usr/bin/env bash
# Reproduces experiments/engines/: DP engines against non-private training and against Opacus
# itself, each workload in ONE benchmark process (python -m dpresearch.benchmark): every
# variant is a run.py configuration trained by trainer.fit (the real path), in blocks
# interleaved round by round. Run it alone on the machine (about 30 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-experiments/engines/raw}
mkdir -p "$out"
all=[nonprivate,dp_hooks,dp_ghost,dp_bk,opacus_hooks,opacus_ghost]
bench() {  # name, overrides...
  local name=$1; shift
  python -m dpresearch.benchmark "$@" logger=none bench.output="$out/$name.json" \
    hydra.run.dir=/tmp/dpresearch-bench/$name
}
# The reference workload: vit_micro at CIFAR-10's shape, batch 64, fp32.
bench vit_micro model=vit_micro dataset=cifar10 bench.methods=$all \
  bench.batch_size=64 bench.steps=8 bench.warmup=2 bench.rounds=2
# Automatic clipping costs the same as fixed: only the per-example factors differ.
bench vit_micro_automatic model=vit_micro dataset=cifar10 clipping=automatic \
  bench.methods=[nonprivate,dp_bk] bench.batch_size=64 bench.steps=8 bench.warmup=2
# Masked Poisson (static shapes) with and without torch.compile.
bench vit_micro_masked_compile model=vit_micro dataset=cifar10 bench.methods=[nonprivate,dp_bk] \
  bench.samplers=[poisson,poisson_masked] bench.compile=[false,true] bench.batch_size=64 \
  bench.steps=6 bench.warmup=3
# Mixed precision: bf16 autocast (this CPU has no bf16 units: AVX-512 without BF16/AMX).
bench vit_micro_bf16 model=vit_micro dataset=cifar10 bench.methods=[nonprivate,dp_bk] \
  bench.precision=[32-true,bf16-mixed] bench.batch_size=64 bench.steps=6 bench.warmup=2
# Convolutions with many positions per example (WRN-16-4, GroupNorm).
bench wrn16_4 model=wrn16_4 dataset=cifar10 bench.methods=$all bench.batch_size=64 \
  bench.steps=4 bench.warmup=1
# The default small CNN on digits (8x8): tiny layers, where per-step overhead dominates.
bench small_cnn model=small_cnn dataset=digits bench.methods=$all bench.batch_size=256 \
  bench.steps=20 bench.warmup=2
# Splitting: a logical batch of 1024 in one physical batch, or in four of 256.
bench small_cnn_split model=small_cnn dataset=digits \
  bench.methods=[nonprivate,dp_bk,opacus_hooks] bench.batch_size=1024 \
  bench.physical=[1024,256] bench.steps=10 bench.warmup=2
# After bk let go of each layer's input once read (issue 19): bk against non-private and Opacus.
bench wrn16_4_memory_fix model=wrn16_4 dataset=cifar10 bench.methods=[nonprivate,dp_bk,opacus_hooks] \
  bench.batch_size=64 bench.steps=4 bench.warmup=1
bench vit_micro_memory_fix model=vit_micro dataset=cifar10 \
  bench.methods=[nonprivate,dp_bk,opacus_hooks] bench.batch_size=64 bench.steps=8 bench.warmup=2
bench small_cnn_memory_fix model=small_cnn dataset=digits \
  bench.methods=[nonprivate,dp_bk,opacus_hooks] bench.batch_size=256 bench.steps=20 bench.warmup=2
# Again, three rounds, on a faster machine (session of 2026-12-02, 05:04 UTC).
bench small_cnn_rerun model=small_cnn dataset=digits \
  bench.methods=[nonprivate,dp_bk,opacus_hooks] bench.batch_size=256 bench.steps=20 bench.warmup=2 \
  bench.rounds=3
python experiments/engines/collect.py "$out"/*.json
