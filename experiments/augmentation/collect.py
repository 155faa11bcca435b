"""Collect the augmentation-multiplicity study: results.csv, results.md and augmentation.png
(test accuracy against K at equal steps and at equal compute)."""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from experiments.runs import completed, write_table  # noqa: E402

HERE = Path(__file__).resolve().parent
NAME = re.compile(r"k(?P<k>\d+)_seed(?P<seed>\d+)")


def main(out: Path) -> None:
    rows = []
    for folder, s in completed(out, 2):
        match = NAME.fullmatch(folder.name)
        rows.append({"budget": folder.parent.name, "k": int(match["k"]),
                     "seed": int(match["seed"]), "steps": s["steps"], "epsilon": s["epsilon"],
                     "noise_multiplier": s["noise_multiplier"], "wall_s": s.get("wall_s"),
                     "test_accuracy": s["test_accuracy"]})  # fmt: skip
    cells = write_table(HERE / "results.csv", rows)
    lines = ["| budget | K | test accuracy | seeds | steps | sigma | epsilon |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    stats = {}
    for (budget, k), rs in sorted(cells.items()):
        acc = [r["test_accuracy"] for r in rs]
        stats[budget, k] = (statistics.mean(acc), statistics.stdev(acc) if len(acc) > 1 else 0)
        lines.append(f"| {budget} | {k} | {stats[budget, k][0]:.3f} +- {stats[budget, k][1]:.3f}"
                     f" | {len(rs)} | {rs[0]['steps']} | {rs[0]['noise_multiplier']:.3g} | "
                     f"{max(r['epsilon'] for r in rs):.3f} |")  # fmt: skip
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    fig, ax = plt.subplots(figsize=(6, 4))
    for budget, label in (("equal_steps", "equal steps (K x compute)"),
                          ("equal_compute", "equal compute (steps / K)")):  # fmt: skip
        ks = sorted(k for b, k in stats if b == budget)
        ax.errorbar(ks, [stats[budget, k][0] for k in ks], yerr=[stats[budget, k][1] for k in ks],
                    marker="o", capsize=3, label=label)  # fmt: skip
    if ("none", 1) in stats:
        ax.axhline(stats["none", 1][0], color="gray", ls="--", label="K = 1, no augmentation")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("augmentations per example K (averaged before clipping)")
    ax.set_ylabel("test accuracy (mean +- sd over seeds)")
    ax.set_title("digits, DP epsilon 3: augmentation multiplicity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "augmentation.png", dpi=120)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
