"""Collect experiments/private_tuning/ from run.sh's output folder: results.csv (one row per
sweep or default run), results.md (means over seeds) and private_tuning.png.

    python experiments/private_tuning/collect.py OUT
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dpresearch.report.runs import find_runs  # noqa: E402
from dpresearch.report.selections import find_selections  # noqa: E402

HERE = Path(__file__).resolve().parent
DATASETS = {"digits_dp": "digits", "mnist1d_dp": "mnist1d"}
KINDS = {
    "private": "private selection, at the sweep's total epsilon",
    "nonprivate": "best trial by exact val. acc., at its trial's epsilon (NOT accounted)",
    "default": "one run, default hyperparameters, at the total epsilon",
}


def rows(out: Path) -> list[dict]:
    found = []
    for exp, dataset in DATASETS.items():
        for r in find_selections([out / exp / "private"]):
            target = r["target_epsilon"]
            seed = int(Path(r["sweep"]).name.split("seed")[-1])
            found.append({"dataset": dataset, "target": target, "seed": seed, "kind": "private",
                          "epsilon": r["epsilon"], "test_accuracy": r["test_accuracy"],
                          "k": r["k"]})  # fmt: skip
            found.append({"dataset": dataset, "target": target, "seed": seed,
                          "kind": "nonprivate", "epsilon": r["nonprivate_epsilon"],
                          "test_accuracy": r["nonprivate_test_accuracy"], "k": r["k"]})  # fmt: skip
        for run in find_runs([out / exp / "default"]):
            s = run.summary
            if s.get("status") != "completed":
                continue
            found.append({"dataset": dataset, "target": s["target_epsilon"], "seed": s["seed"],
                          "kind": "default", "epsilon": s["epsilon"],
                          "test_accuracy": s["test_accuracy"], "k": 1})  # fmt: skip
    return sorted(found, key=lambda r: (r["dataset"], r["target"], r["kind"], r["seed"]))


def summarise(found: list[dict]) -> list[dict]:
    pools = defaultdict(list)
    for r in found:
        pools[(r["dataset"], r["target"], r["kind"])].append(r)
    out = []
    for (dataset, target, kind), members in sorted(pools.items()):
        acc = [m["test_accuracy"] for m in members if m["test_accuracy"] is not None]
        eps = sorted({round(m["epsilon"], 4) for m in members if m["epsilon"] is not None})
        out.append({"dataset": dataset, "target": target, "kind": kind, "n": len(acc),
                    "mean": float(np.mean(acc)) if acc else None,
                    "std": float(np.std(acc)) if acc else None, "epsilon": eps,
                    "k": [m["k"] for m in members]})  # fmt: skip
    return out


def plot(summary: list[dict], path: Path) -> None:
    datasets = sorted({s["dataset"] for s in summary})
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for i, (kind, label) in enumerate(KINDS.items()):
            pts = [s for s in summary if s["dataset"] == dataset and s["kind"] == kind and s["n"]]
            xs = [max(s["epsilon"]) for s in pts]
            ax.errorbar(xs, [s["mean"] for s in pts], yerr=[s["std"] for s in pts], capsize=3,
                        marker="os^"[i], ls="--" if kind == "nonprivate" else "-",
                        label=label)  # fmt: skip
        ax.set_xscale("log")
        ax.set_xticks([0.2, 0.5, 1, 2, 4, 8], ["0.2", "0.5", "1", "2", "4", "8"])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("epsilon of the released model (delta 1e-5)")
        ax.set_ylabel("test accuracy (mean +- sd over 3 seeds)")
        ax.set_title(f"{dataset}: honest tuning vs today's practice vs no tuning", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(summary: list[dict]) -> str:
    lines = ["| dataset | total epsilon | private selection | K (3 seeds) | best by exact val. "
             "(NOT accounted) | its per-trial epsilon | default hyperparameters |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    index = {(s["dataset"], s["target"], s["kind"]): s for s in summary}

    def cell(s: dict | None) -> str:
        return f"{s['mean']:.3f} +- {s['std']:.3f}" if s and s["mean"] is not None else "-"

    for dataset, target in sorted({(s["dataset"], s["target"]) for s in summary}):
        p, n, d = (index.get((dataset, target, k)) for k in KINDS)
        eps = ", ".join(f"{e:.3g}" for e in (n or {}).get("epsilon", []))
        ks = ", ".join(str(k) for k in (p or {}).get("k", []))
        lines.append(f"| {dataset} | {target:g} | {cell(p)} | {ks} | {cell(n)} | {eps} | "
                     f"{cell(d)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(out: Path) -> None:
    found = rows(out)
    with open(HERE / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(found[0]))
        writer.writeheader()
        writer.writerows(found)
    summary = summarise(found)
    plot(summary, HERE / "private_tuning.png")
    (HERE / "results.md").write_text(markdown(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
