"""Collect the spine runs' summary.json files into results.csv and a figure.

python experiments/spine/collect.py RUN_DIR...   (see experiments/spine/README.md)
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
KEYS = ["experiment", "private", "sampler", "test_accuracy", "val_accuracy", "epsilon", "delta",
        "noise_multiplier", "sample_rate", "steps", "train_examples_per_s", "wall_s"]  # fmt: skip


def main(run_dirs: list[str]) -> None:
    rows = [json.loads((Path(d) / "summary.json").read_text()) for d in run_dirs]
    with open(HERE / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, KEYS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    names = [r["experiment"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].bar(names, [r["test_accuracy"] for r in rows], color="tab:blue")
    axes[0].set_ylabel("test accuracy")
    axes[0].set_ylim(0, 1)
    for i, r in enumerate(rows):
        eps = r["epsilon"]
        axes[0].text(i, r["test_accuracy"] + 0.02, f"eps={eps:.2f}" if eps else "no DP",
                     ha="center")  # fmt: skip
    axes[1].bar(names, [r["train_examples_per_s"] for r in rows], color="tab:orange")
    axes[1].set_ylabel("training examples / s (2-core CPU)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=15)
    fig.tight_layout()
    fig.savefig(HERE / "spine.png", dpi=120)
    print((HERE / "results.csv").read_text())


if __name__ == "__main__":
    main(sys.argv[1:])
