"""summary.json: the machine-readable record of a run (written even when the run fails)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

SUMMARY_KEYS = (
    "experiment", "dataset", "model", "clipping", "finetune", "sampler", "private",
    "test_accuracy", "val_accuracy", "epsilon", "delta", "noise_multiplier", "sample_rate",
    "expected_batch_size", "steps", "epochs", "accountant", "accounting_matches_sampler",
    "train_examples_per_s", "peak_memory_mb", "wall_s", "seed",
)  # fmt: skip


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_summary(path: Path, summary: dict) -> dict:
    """Atomically write ``summary`` (every key of SUMMARY_KEYS present, null if unknown)."""
    record = {k: None for k in SUMMARY_KEYS}
    record.update(summary)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_clean(record), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return record
