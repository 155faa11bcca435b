"""Released models of sweeps: each sweep folder's selection.json. A private selection's winner is
drawn at the TOTAL epsilon of its sweep; a non-private selection's winner at its own trial's
epsilon, labelled as a choice that is NOT accounted."""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dpresearch.report.runs import load_run  # noqa: E402

log = logging.getLogger(__name__)
PRIVATE = "private selection (total epsilon of the sweep)"
NONPRIVATE = "non-private selection (trial's epsilon; the choice is NOT accounted)"
COLUMNS = [("sweep", "sweep"), ("dataset", "dataset"), ("method", "method"),
           ("selection", "selection"), ("k", "trials (K)"), ("epsilon", "epsilon of the release"),
           ("trial_epsilon", "per-trial epsilon"), ("test_accuracy", "test acc"),
           ("nonprivate_test_accuracy", "best-by-exact-val test acc")]  # fmt: skip


def find_selections(roots: list[Path]) -> list[dict]:
    """One row per selection.json under ``roots`` (unreadable ones are skipped, named)."""
    rows = []
    for root in roots:
        for path in sorted(Path(root).rglob("selection.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                log.warning("skipping %s: %s", path, err)
                continue
            if (row := selection_row(path.parent, record)) is not None:
                rows.append(row)
    return rows


def selection_row(sweep: Path, record: dict) -> dict | None:
    winner = record.get("winner")
    if not winner or not winner.get("output_dir"):
        return None
    run = load_run(Path(winner["output_dir"]))
    private = record.get("selection") == "private"
    other = record.get("nonprivate_choice") or {}
    return {
        "sweep": str(sweep), "dataset": run.dataset, "method": run.method,
        "selection": record.get("selection"), "k": record.get("k_drawn") or
        sum((record.get("trials") or {}).values()),
        "epsilon": record.get("total_epsilon") if private else winner.get("trial_training_epsilon"),
        "trial_epsilon": winner.get("trial_training_epsilon"),
        "target_epsilon": record.get("total_target_epsilon"),
        "test_accuracy": winner.get("test_accuracy"),
        "nonprivate_test_accuracy": other.get("test_accuracy"),
        "nonprivate_epsilon": other.get("trial_training_epsilon"),
    }  # fmt: skip


def points(rows: list[dict]) -> dict[str, list[tuple[float, float, float, int]]]:
    """Series label -> (epsilon, mean test accuracy, std, n), pooling sweeps of one method and
    kind that released at the same epsilon (never averaging epsilons). A private sweep also
    gives its best-by-exact-validation trial as a non-private point (today's practice)."""
    pools: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        kind = PRIVATE if r["selection"] == "private" else NONPRIVATE
        if r["epsilon"] is not None and r["test_accuracy"] is not None:
            pools[(r["method"], kind)][f"{r['epsilon']:.6g}"].append(r["test_accuracy"])
        if kind == PRIVATE and r.get("nonprivate_test_accuracy") is not None:
            eps = r["nonprivate_epsilon"]
            pools[(r["method"], NONPRIVATE)][f"{eps:.6g}"].append(r["nonprivate_test_accuracy"])
    out = {}
    for (method, kind), by_eps in sorted(pools.items()):
        out[f"{method}: {kind}"] = sorted(
            (float(e), float(np.mean(v)), float(np.std(v)), len(v)) for e, v in by_eps.items()
        )
    return out


def plot(series: dict[str, list[tuple]], title: str, path: Path) -> None:
    """Accuracy of released models against the epsilon their release spent."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, (label, pts) in enumerate(series.items()):
        nonprivate = "NOT accounted" in label or "non-private" in label
        eps = [p[0] for p in pts]
        ax.errorbar(eps, [p[1] for p in pts], yerr=[p[2] for p in pts], capsize=3,
                    marker="os^vD"[i % 5], ls="--" if nonprivate else "-", label=label)  # fmt: skip
        for e, m, _, n in pts:
            ax.annotate(f"n={n}", (e, m), textcoords="offset points", xytext=(4, -10), fontsize=7)
    if any(math.isfinite(p[0]) and p[0] > 0 for pts in series.values() for p in pts):
        ax.set_xscale("log")
    ax.set_xlabel("epsilon of the released model (delta as configured)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
