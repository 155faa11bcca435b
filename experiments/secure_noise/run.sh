#!/usr/bin/env bash
# Reproduces experiments/secure_noise/: what privacy.randomness=secure costs (the noise part). DP bk with the
# seeded torch.Generator against DP bk with noise from os.urandom, in one benchmark process
# per model, interleaved round by round (python -m dpresearch.benchmark). About 1.5 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=experiments/secure_noise/raw
mkdir -p "$out"
bench() {  # name, overrides...
  local name=$1; shift
  python -m dpresearch.benchmark bench.methods=[dp_bk,dp_bk_secure] "$@" \
    bench.output="$out/$name.json" hydra.run.dir="/tmp/dpresearch-bench/$name"
}
bench small_cnn model=small_cnn dataset=digits bench.batch_size=256 bench.steps=30 bench.warmup=3
bench wrn16_4 model=wrn16_4 dataset=cifar10 bench.batch_size=64 bench.steps=8 bench.warmup=2
bench minilm_full model=minilm dataset=sentiment_templates bench.batch_size=32 bench.steps=6 \
  bench.warmup=1
python - "$out" <<'PY'
import csv, json, sys
from pathlib import Path
rows = []
for path in sorted(Path(sys.argv[1]).glob("*.json")):
    record = json.loads(path.read_text())
    by = {r["method"]: r for r in record["rows"]}
    params = record.get("trainable_params")
    rows.append({"workload": path.stem, "dp_bk_ms": round(by["dp_bk"]["ms_per_step"], 2),
                 "dp_bk_secure_ms": round(by["dp_bk_secure"]["ms_per_step"], 2),
                 "secure_over_seeded": round(by["dp_bk_secure"]["ms_per_step"]
                                             / by["dp_bk"]["ms_per_step"], 3),
                 "device": record["device"]})
with open("experiments/secure_noise/results.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
for r in rows:
    print(r)
PY
