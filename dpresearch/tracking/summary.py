"""summary.json: the machine-readable record of a run (written even when the run fails)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from dpresearch.atomic import write_atomic

log = logging.getLogger(__name__)

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
    """Atomically write ``summary`` (every key of SUMMARY_KEYS present, null if unknown). When
    the disk is full, the few fields that say how the run ended are written instead, and the
    write error is raised only if even they cannot be; no temporary file is left behind."""
    record = {k: None for k in SUMMARY_KEYS}
    record.update(summary)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(path, json.dumps(_clean(record), indent=2, sort_keys=False) + "\n")
    except OSError as err:
        brief = {k: record.get(k) for k in ("experiment", "status", "error", "steps", "epsilon")}
        brief["summary_error"] = f"the full summary could not be written: {err}"
        log.error("%s: %s; writing its essentials only", path, err)
        write_atomic(path, json.dumps(_clean(brief)) + "\n")
        record["summary_error"] = brief["summary_error"]
    return record


def record_failure(out: Path, rank: int, error: BaseException, trace: str, since: float) -> dict:
    """Write this rank's traceback (``error.log`` on rank 0, ``error.rankN.log`` elsewhere) and
    return the summary fields of the failure. When several ranks fail (one raises, the others
    then lose their peer in an all-reduce), ``error`` is the earliest failure since ``since``
    (the cause) and ``failed_ranks`` lists every rank that left a log."""
    out = Path(out)
    message = f"{type(error).__name__}: {error}"
    name = "error.log" if rank == 0 else f"error.rank{rank}.log"
    try:
        write_atomic(out / name, f"rank {rank}: {message}\n{trace}")
    except OSError as err:  # a full disk: the error still reaches stderr and the exit status
        log.error("could not write %s (%s); the run failed with %s", out / name, err, message)
    logs = sorted(
        (log for log in out.glob("error*.log") if log.stat().st_mtime >= since),
        key=lambda log: log.stat().st_mtime,
    )
    first = logs[0].read_text().splitlines()[0] if logs else f"rank {rank}: {message}"
    ranks = sorted(int(log.read_text().split(":", 1)[0].split()[1]) for log in logs)
    return {"status": "failed", "error": first if ranks != [0] else message,
            "failed_ranks": ranks or [rank]}  # fmt: skip


def method_label(summary: dict) -> str:
    """How comparisons name a run's method: clipping/engine/scope[/sampler][/noise]
    [/Kviews][/user-level], or non-private."""
    if summary.get("private") is False:
        return f"non-private/{summary.get('finetune') or 'full'}"
    parts = [summary.get("clipping") or "?", summary.get("engine") or "?",
             summary.get("finetune") or "full"]  # fmt: skip
    if summary.get("sampler") not in (None, "poisson"):
        parts.append(summary["sampler"])
    if noise_mechanism(summary) not in (None, "independent"):
        parts.append(noise_mechanism(summary))
    if (summary.get("augmentations") or 1) > 1:
        parts.append(f"{summary['augmentations']}views")
    if summary.get("privacy_unit") == "user":  # its epsilon protects a user, not an example
        parts.append("user-level")
    return "/".join(str(p) for p in parts)


def noise_mechanism(summary: dict) -> str | None:
    """The run's noise mechanism (summary.json ``noise``), None for a non-private run."""
    noise = summary.get("noise")
    return noise.get("mechanism") if isinstance(noise, dict) else None


def run_tags(summary: dict, job_type: str, config: dict | None = None) -> tuple[list[str], dict]:
    """wandb tags, and what the run's wandb config adds to its Hydra config: ``method``,
    ``job_type``, ``setting`` (the id shared by the seeds of one config; dashboards group by
    it) and short ``labels`` under their own key, so no Hydra node is overwritten."""
    from dpresearch.tracking.setting import setting_id, setting_of

    keys = ("clipping", "engine", "finetune", "sampler", "dataset", "model", "target_epsilon",
            "seed")  # fmt: skip
    labels = {k: summary.get(k) for k in keys}
    labels["noise"] = noise_mechanism(summary)
    labels["unit"] = summary.get("privacy_unit")
    method = method_label(summary)
    values = setting_of(config or {}, method, str(summary.get("dataset")),
                        summary.get("private") is not False)  # fmt: skip
    extra = {"method": method, "job_type": job_type, "setting": setting_id(values),
             "labels": labels}  # fmt: skip
    tags = [f"method={method}", *(f"{k}={v}" for k, v in labels.items() if v is not None)]
    return tags, extra
