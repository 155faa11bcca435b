"""Run folders as training writes them (config.yaml, summary.json, metrics.jsonl), for the
report tests."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

CLIPPING = {"fixed": "FixedClipping", "automatic": "AutomaticClipping"}


def fake_run(root: Path, name: str, *, config: dict | None = None, **summary) -> Path:
    """A run folder; its config follows the summary (seed, clipping, target epsilon, lr and
    clip); ``config`` adds or replaces top-level config nodes (e.g. trainer, sweep_trial)."""
    folder = root / name
    folder.mkdir(parents=True)
    private = summary.get("private", True)
    clipping = summary.get("clipping", "fixed")
    node = {
        "dataset": {"_target_": "dpresearch.data.digits.DigitsDataModule"},
        "optimizer": {"_target_": "torch.optim.Adam", "lr": summary.pop("lr", 0.01)},
        "clipping": {"_target_": f"dpresearch.privacy.spec.{CLIPPING.get(clipping, clipping)}",
                     "max_grad_norm": summary.pop("clip", 1.0), "engine": "auto"},
        "privacy": ({"_target_": "dpresearch.privacy.spec.DPSpec",
                     "target_epsilon": summary.get("target_epsilon")} if private
                    else {"_target_": "dpresearch.privacy.spec.NoPrivacy"}),
        "trainer": {"max_epochs": 30, "enable_progress_bar": True},
        "seed": summary.get("seed", 0),
        "name": "digits_dp",
    }  # fmt: skip
    node.update(config or {})
    (folder / "config.yaml").write_text(yaml.safe_dump(node))
    if summary.get("status") != "running":
        base = {"dataset": "digits", "clipping": "fixed", "engine": "bk", "finetune": "full",
                "sampler": "poisson", "private": True, "seed": 0, "train_examples_per_s": 1000.0,
                "peak_memory_mb": 500.0, "wall_s": 10.0, "val_accuracy": 0.5,
                "machine": {"host": "h", "cpus": 2, "load_1m_start": 0.5, "load_1m_end": 1.0,
                            "device": "cpu"}}  # fmt: skip
        (folder / "summary.json").write_text(json.dumps({**base, **summary}))
    metrics = [{"stage": "val", "epoch": e, "val_acc": 0.1 * (e + 1)} for e in range(3)]
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in metrics) + "\n{bro")
    return folder
