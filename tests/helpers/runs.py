"""Run folders as training writes them (config.yaml, summary.json, metrics.jsonl), for the
report tests."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def fake_run(root: Path, name: str, **summary) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    config = {"dataset": {"_target_": "dpresearch.data.digits.DigitsDataModule"},
              "optimizer": {"lr": summary.pop("lr", 0.01)},
              "clipping": {"max_grad_norm": summary.pop("clip", 1.0)}}  # fmt: skip
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    if summary.get("status") != "running":
        base = {"dataset": "digits", "clipping": "fixed", "engine": "bk", "finetune": "full",
                "sampler": "poisson", "private": True, "seed": 0, "train_examples_per_s": 1000.0,
                "peak_memory_mb": 500.0, "wall_s": 10.0, "val_accuracy": 0.5}  # fmt: skip
        (folder / "summary.json").write_text(json.dumps({**base, **summary}))
    metrics = [{"stage": "val", "epoch": e, "val_acc": 0.1 * (e + 1)} for e in range(3)]
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in metrics) + "\n{bro")
    return folder
