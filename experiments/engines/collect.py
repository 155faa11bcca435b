"""Collect benchmark.json files into results.csv and engines.png (speed and memory ratios)."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
FIELDS = ["workload", "method", "examples_per_s", "ms_per_step", "peak_memory_mb",
          "ratio_to_nonprivate", "memory_ratio_to_nonprivate", "device"]  # fmt: skip


def main(paths: list[str], csv_path: Path = HERE / "results.csv",
         figure: Path = HERE / "engines.png") -> None:  # fmt: skip
    rows = []
    for path in paths:
        record = json.loads(Path(path).read_text())
        for r in record["rows"]:
            rows.append({"workload": Path(path).stem, **r, "device": record["device"]})
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()})

    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(methods)
    for ax, key, label in (
        (axes[0], "ratio_to_nonprivate", "examples/s relative to non-private"),
        (axes[1], "memory_ratio_to_nonprivate", "peak memory relative to non-private"),
    ):
        for j, method in enumerate(methods):
            xs, ys = [], []
            for i, w in enumerate(workloads):
                match = [r for r in rows if r["workload"] == w and r["method"] == method]
                if match:
                    xs.append(i + (j - (len(methods) - 1) / 2) * width)
                    ys.append(match[0][key])
            bars = ax.bar(xs, ys, width, label=method)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_xticks(range(len(workloads)), workloads, rotation=15)
        ax.set_ylabel(label)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(methods), fontsize=9)
    fig.suptitle(f"DP engines vs non-private, one process per workload ({rows[0]['device']})")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(figure, dpi=120)
    print(f"wrote {csv_path} and {figure}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--csv", type=Path, default=HERE / "results.csv")
    parser.add_argument("--figure", type=Path, default=HERE / "engines.png")
    args = parser.parse_args()
    main(args.paths, args.csv, args.figure)
