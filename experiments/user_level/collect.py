"""Collect the user-level study: results.csv (every run), results.md (the table) and
user_level.png (test accuracy against epsilon, one line per privacy unit)."""

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
NAME = re.compile(r"eps(?P<eps>\d+)_seed(?P<seed>\d+)")
LABELS = {"example": "example-level", "user_uniform": "user-level, uniform users",
          "user_skewed": "user-level, skewed users (Zipf 1.0)"}  # fmt: skip


def main(out: Path) -> None:
    rows = []
    for folder, s in completed(out, 3):
        match = NAME.fullmatch(folder.name)
        rows.append({"dataset": folder.parents[1].name, "unit": folder.parent.name,
                     "target_epsilon": int(match["eps"]), "seed": int(match["seed"]),
                     "epsilon": s["epsilon"], "noise_multiplier": s["noise_multiplier"],
                     "sample_rate": s["sample_rate"], "steps": s["steps"],
                     "num_users": s.get("num_users"), "num_train": s["num_train"],
                     "test_accuracy": s["test_accuracy"]})  # fmt: skip
    cells = write_table(HERE / "results.csv", rows)
    lines = ["| dataset | epsilon | unit | test accuracy | seeds | sigma | sample rate | "
             "units (examples) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (dataset, unit, eps), rs in sorted(cells.items()):
        acc = [r["test_accuracy"] for r in rs]
        units = rs[0]["num_users"] or rs[0]["num_train"]
        lines.append(f"| {dataset} | {eps} | {unit} | {statistics.mean(acc):.3f} +- "
                     f"{statistics.stdev(acc) if len(acc) > 1 else 0:.3f} | {len(acc)} | "
                     f"{rs[0]['noise_multiplier']:.3g} | {rs[0]['sample_rate']:.3g} | "
                     f"{units} ({rs[0]['num_train']}) |")  # fmt: skip
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    datasets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for unit, label in LABELS.items():
            eps = sorted(e for d, u, e in cells if (d, u) == (dataset, unit))
            means = [statistics.mean(r["test_accuracy"] for r in cells[dataset, unit, e])
                     for e in eps]  # fmt: skip
            sds = [statistics.stdev([r["test_accuracy"] for r in cells[dataset, unit, e]])
                   if len(cells[dataset, unit, e]) > 1 else 0.0 for e in eps]  # fmt: skip
            if eps:
                ax.errorbar(eps, means, yerr=sds, marker="o", capsize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("epsilon (delta 1e-5): per example, or per user")
        ax.set_ylabel("test accuracy (mean +- sd over seeds)")
        ax.set_title(dataset)
        ax.legend(fontsize=8)
    fig.suptitle("Example-level against user-level DP at equal epsilon")
    fig.tight_layout()
    fig.savefig(HERE / "user_level.png", dpi=120)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
