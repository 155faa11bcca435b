"""results.csv (benchmark rows), runs.csv (the three DP fine-tuning runs) and finetune.png."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
BENCH = ["scope", "method", "examples_per_s", "peak_memory_mb", "ratio_to_nonprivate",
         "ratio_to_nonprivate_full", "memory_ratio_to_dp_full"]  # fmt: skip
RUNS = ["finetune", "trainable_params", "trainable_fraction", "test_accuracy", "epsilon",
        "noise_multiplier", "steps", "train_examples_per_s", "wall_s"]  # fmt: skip


def write(path: Path, rows: list[dict], fields: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()})


def main(bench_json: str, run_dirs: list[str]) -> None:
    bench = json.loads(Path(bench_json).read_text())["rows"]
    write(HERE / "results.csv", bench, BENCH)
    runs = [json.loads((Path(d) / "summary.json").read_text()) for d in run_dirs]
    write(HERE / "runs.csv", runs, RUNS)

    scopes = list(dict.fromkeys(r["scope"] for r in bench))
    methods = list(dict.fromkeys(r["method"] for r in bench))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(scopes))]
        rows = [next(r for r in bench if r["scope"] == s and r["method"] == method) for s in scopes]
        bars = axes[0].bar(xs, [r["ratio_to_nonprivate_full"] for r in rows], width, label=method)
        axes[0].bar_label(bars, fmt="%.2f", fontsize=8)
        bars = axes[1].bar(xs, [r["peak_memory_mb"] for r in rows], width, label=method)
        axes[1].bar_label(bars, fmt="%.0f", fontsize=8)
    for ax, label in ((axes[0], "examples/s relative to non-private full"),
                      (axes[1], "peak memory (MiB)")):  # fmt: skip
        ax.set_xticks(range(len(scopes)), scopes)
        ax.set_ylabel(label)
    axes[0].axhline(1.0, color="gray", lw=0.8, ls="--")
    axes[0].legend(fontsize=8)
    bars = axes[2].bar([r["finetune"] for r in runs], [r["test_accuracy"] for r in runs],
                       color="tab:orange")  # fmt: skip
    axes[2].bar_label(bars, fmt="%.3f", fontsize=8)
    axes[2].axhline(0.5, color="gray", lw=0.8, ls="--")
    axes[2].set_ylabel(f"test accuracy, DP eps {runs[0]['epsilon']:.2f} (smoke task)")
    fig.suptitle("all-MiniLM-L6-v2: fine-tuning scopes (benchmark: seq 128, batch 32, one process)")
    fig.tight_layout()
    fig.savefig(HERE / "finetune.png", dpi=120)
    print(f"wrote results.csv, runs.csv and finetune.png in {HERE}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
