"""A run's setting: its resolved config without the seed and what cannot change a result
(logging, paths, progress bars, physical batch size). Runs of one setting are seeds of one
experiment, the only runs a comparison may pool; wandb groups by the setting's id."""

from __future__ import annotations

import hashlib
import json

# Dotted keys (and their subtrees) that do not change what a run computes.
IGNORED = (
    "seed", "name", "print_config", "logger", "paths", "extras", "tags", "hydra", "debug",
    "sweep_trial", "ckpt_path", "run.resume", "run.checkpoint", "privacy.noise_seed",
    "trainer.enable_progress_bar", "trainer.log_every_n_steps", "trainer.enable_model_summary",
    "dataset.eval_batch_size", "sampler.max_physical_batch_size",
)  # fmt: skip
# Callbacks that only observe or print (others, e.g. early stopping or canaries, split groups).
OBSERVING_CALLBACKS = (
    "ModelSummary", "RichModelSummary", "RichProgressBar", "TQDMProgressBar", "ThroughputMonitor",
    "LearningRateMonitor", "ModelCheckpoint", "DeviceStatsMonitor",
)  # fmt: skip
# What the method label already names (clipping function, engine, scope, sampler, privacy,
# noise mechanism).
METHOD_KEYS = ("clipping._target_", "clipping.engine", "finetune._target_", "sampler._target_",
               "privacy._target_", "noise._target_")  # fmt: skip


def flatten(node, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        out: dict[str, object] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out or ({prefix[:-1]: "{}"} if prefix else {})
    if isinstance(node, list):
        return {prefix[:-1]: json.dumps(node, sort_keys=True, default=str)}
    return {prefix[:-1]: node}


def _ignored(key: str, config: dict) -> bool:
    if under(key, IGNORED):
        return True
    if key.startswith("callbacks."):
        name = key.split(".")[1]
        target = str(config.get(f"callbacks.{name}._target_") or "")
        return target.rsplit(".", 1)[-1] in OBSERVING_CALLBACKS
    return False


def setting_of(config: dict, method: str, dataset: str, private: bool) -> dict[str, object]:
    """The flattened config without the seed and what cannot change results; plus the method
    and dataset (so runs whose records lack a config still compare)."""
    flat = flatten(config)
    out = {k: v for k, v in flat.items() if not _ignored(k, flat)}
    if not private or str(flat.get("privacy._target_")).endswith("NoPrivacy"):
        out = {k: v for k, v in out.items() if not k.startswith("clipping.")}  # unused
    out["method"] = method
    out["dataset"] = dataset
    return out


def setting_id(values: dict[str, object]) -> str:
    """A short name for a setting: its method and a digest of the rest."""
    digest = hashlib.sha256(setting_key(values).encode()).hexdigest()[:8]
    return f"{values['method']}#{digest}"


def under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def setting_key(values: dict[str, object], drop: tuple[str, ...] = ()) -> str:
    kept = {k: v for k, v in values.items() if not under(k, drop)}
    return json.dumps(sorted(kept.items()), default=str)
