#!/usr/bin/env bash
# Reproduces experiments/audit/ (python -m dpresearch.audit on digits, small CNN, bk engine):
#  1. tightness: correct runs at claimed epsilon 2, 4 and 8, three seeds each, with gradient
#     canaries (one per coordinate, 50,000: Steinke, f-DP and all-iterates bounds), and one
#     seed each with canary examples (500) and input canaries (300);
#  2. the bug table: every injected bug (audit.sabotage), caught by which check or bound, in
#     how many CPU-seconds; the DDP ones on two gloo processes; the two engine bugs also
#     with canary examples in the batches;
#  3. clean configurations (engines x samplers x scopes) through the checks.
# Runs one at a time (run it alone: CPU seconds are the measure); a finished run is skipped
# on a rerun. Then collect.py writes results.csv, bugs.csv, clean.csv and audit.png here.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=experiments/audit/raw
mkdir -p "$out"
export WANDB_MODE=${WANDB_MODE:-disabled}
audit() {  # name, overrides... (RUN_DIR: a run folder to keep, for a resume)
  local name=$1; shift
  [ -f "$out/$name.json" ] && return 0
  local dir=${RUN_DIR:-/tmp/dpresearch-audit/$name}
  [ -n "${RUN_DIR:-}" ] || rm -rf "$dir"
  python -m dpresearch.audit +experiment=digits_dp logger=csv trainer.enable_progress_bar=false \
    audit.output="$out/$name.json" hydra.run.dir="$dir" "$@"
}
for eps in 2 4 8; do
  for seed in 0 1 2; do
    audit "tight_gradient_eps${eps}_seed${seed}" privacy.target_epsilon=$eps seed=$seed \
      audit.seed=$seed
  done
  audit "tight_example_eps${eps}" privacy.target_epsilon=$eps audit.kind=example
  audit "tight_input_eps${eps}" privacy.target_epsilon=$eps audit.kind=input audit.canaries=300
done
for bug in noise clipping clipping_layer norm_layer shuffle realized_batch; do
  audit "bug_$bug" audit.sabotage=$bug
done
for bug in clipping_layer norm_layer; do
  audit "bug_${bug}_example" audit.sabotage=$bug audit.kind=example
done
for bug in frozen_noise frozen_grad; do
  audit "bug_$bug" audit.sabotage=$bug finetune=head_only
done
sigma=(privacy.target_epsilon=null privacy.noise_multiplier=1.0)
if [ ! -f "$out/bug_resume_accountant.json" ]; then  # 15 epochs, then resumed to 30
  rm -rf /tmp/dpresearch-audit/resume "$out/bug_resume_accountant_first.json"
  RUN_DIR=/tmp/dpresearch-audit/resume audit bug_resume_accountant_first "${sigma[@]}" \
    trainer.max_epochs=15
  RUN_DIR=/tmp/dpresearch-audit/resume audit bug_resume_accountant "${sigma[@]}" \
    trainer.max_epochs=30 run.resume=true audit.sabotage=resume_accountant
fi
for bug in none noise_per_rank; do
  audit "bug_ddp_$bug" audit.kind=none audit.sabotage=$bug trainer=ddp_cpu trainer.devices=2
done
for engine in hooks ghost bk vmap; do
  for sampler in poisson poisson_masked; do
    audit "clean_${engine}_${sampler}" audit.kind=none clipping.engine=$engine sampler=$sampler
  done
done
audit clean_bk_head_only audit.kind=none finetune=head_only
audit clean_hooks_bias_only audit.kind=none finetune=bias_only clipping.engine=hooks
python experiments/audit/collect.py "$out"
