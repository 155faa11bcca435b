"""Collect the audit JSONs into results.csv and audit.png (claimed epsilon against the lower
bound, per run)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
KEYS = ["run", "kind", "sabotage", "claimed_epsilon", "epsilon_lower_bound", "consistent",
        "correct", "guesses", "canaries", "included", "steps", "noise_multiplier",
        "sample_rate", "test_accuracy"]  # fmt: skip


def main(paths: list[str]) -> None:
    rows = []
    for path in paths:
        record = json.loads(Path(path).read_text())
        rows.append({"run": Path(path).stem, **{k: record.get(k) for k in KEYS[1:]}})
    with open(HERE / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=KEYS)
        writer.writeheader()
        writer.writerows(rows)
    fig, ax = plt.subplots(figsize=(9, 4))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["claimed_epsilon"] for r in rows], 0.4, label="claimed")
    ax.bar([i + 0.2 for i in x], [r["epsilon_lower_bound"] for r in rows], 0.4,
           label="audited lower bound (95%)")  # fmt: skip
    for i, r in enumerate(rows):
        if not r["consistent"]:
            ax.annotate("violated", (i + 0.2, r["epsilon_lower_bound"]), ha="center",
                        va="bottom", color="red")  # fmt: skip
    ax.set_xticks(list(x), [r["run"] for r in rows], rotation=15, fontsize=8)
    ax.set_ylabel("epsilon")
    ax.set_title("One-run audits of digits_dp: gradient (1,000) and input (300) canaries")
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "audit.png", dpi=130)
    for r in rows:
        print(r)


if __name__ == "__main__":
    main(sys.argv[1:])
