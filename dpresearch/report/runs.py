"""Read the local record every run leaves (summary.json, metrics.jsonl, config.yaml) into
one table, whatever state the run is in: completed, failed, or still running."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dpresearch.tracking.summary import method_label

log = logging.getLogger(__name__)


@dataclass
class Run:
    folder: Path
    summary: dict
    metrics: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.summary.get("status") or "running"

    @property
    def dataset(self) -> str:
        if self.summary.get("dataset"):
            return str(self.summary["dataset"])
        target = self.config.get("dataset", {}).get("_target_", "?")
        try:  # a run still going has no summary yet: the data module's own name
            from hydra.utils import get_class

            return str(get_class(target).name)
        except Exception:
            return target.rsplit(".", 1)[-1]

    def _name_from_config(self, group: str) -> str | None:
        target = (self.config.get(group) or {}).get("_target_")
        if not target:
            return None
        try:
            from hydra.utils import get_class

            return str(get_class(target).name)
        except Exception:
            return None

    @property
    def method(self) -> str:
        s = dict(self.summary)
        if not s:  # still running: what its config says
            s = {"clipping": self._name_from_config("clipping"),
                 "engine": (self.config.get("clipping") or {}).get("engine"),
                 "finetune": self._name_from_config("finetune")}  # fmt: skip
        return method_label(s)

    @property
    def epsilon(self) -> float:
        """The spent epsilon (inf for non-private runs)."""
        if self.summary.get("private") is False:
            return math.inf
        eps = self.summary.get("epsilon")
        return float(eps) if eps is not None else math.nan

    @property
    def sweep_trial(self) -> bool:
        """A trial of an Optuna sweep (its config carries the trial's study)."""
        return bool(self.config.get("sweep_trial") or self.summary.get("sweep_trial"))

    @property
    def debug(self) -> bool:
        """A debug run (fast_dev_run, overfit_batches, limited batches): not a result."""
        return self.status == "debug" or bool(self.summary.get("debug") or self.config.get("debug"))

    def param(self, dotted: str):
        node = self.config
        for key in dotted.split("."):
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node


def load_run(folder: Path) -> Run:
    summary_path = folder / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    metrics = []
    if (folder / "metrics.jsonl").exists():
        for line in (folder / "metrics.jsonl").read_text().splitlines():
            try:
                metrics.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written by a running job
                continue
    config = {}
    if (folder / "config.yaml").exists():
        config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    return Run(folder, summary, metrics, config)


def find_runs(roots: list[Path]) -> list[Run]:
    """Every run folder (one with summary.json or config.yaml) below ``roots``."""
    folders = set()
    for root in roots:
        if not root.exists():
            raise FileNotFoundError(f"{root} does not exist")
        for name in ("summary.json", "config.yaml"):
            folders.update(p.parent for p in root.rglob(name) if ".hydra" not in p.parts)
    runs = []
    for folder in sorted(folders):
        try:
            runs.append(load_run(folder))
        except (OSError, ValueError, yaml.YAMLError) as err:  # truncated, half written
            log.warning("skipping %s: its records cannot be read (%s)", folder, err)
    return runs
