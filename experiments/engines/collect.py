"""Collect benchmark.json files into results.csv and engines.png.

Top: each engine and Opacus itself against non-private training (speed and peak memory,
ratios in one process) per workload. Bottom: the axes studies (sampler and compile, precision,
physical batch), each variant's examples/s against the study's reference non-private variant
(every axis at its first value).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
AXES = ["scope", "sampler", "compile", "physical_batch_size", "precision"]
FIELDS = ["workload", "method", *AXES, "examples_per_s", "ms_per_step", "peak_memory_mb",
          "ratio_to_nonprivate", "memory_ratio_to_nonprivate", "ratio_to_reference", "device",
          "threads"]  # fmt: skip
SHORT = {"sampler": "", "compile": "compile", "physical_batch_size": "physical",
         "precision": ""}  # fmt: skip


def load(paths: list[str]) -> list[dict]:
    rows = []
    for path in paths:
        record = json.loads(Path(path).read_text())
        varied = [a for a in AXES if len({r[a] for r in record["rows"]}) > 1]
        for r in record["rows"]:
            label = ", ".join(f"{SHORT[a]} {r[a]}".strip() for a in varied) or ""
            rows.append({"workload": Path(path).stem, **r, "device": record["device"],
                         "threads": record.get("threads"), "label": label,
                         "study": bool(varied)})  # fmt: skip
    return rows


def bars(ax, rows: list[dict], groups: list[str], group_of, key: str, ylabel: str) -> None:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        xs, ys = [], []
        for i, g in enumerate(groups):
            match = [r for r in rows if group_of(r) == g and r["method"] == method]
            if match and match[0][key] is not None:
                xs.append(i + (j - (len(methods) - 1) / 2) * width)
                ys.append(match[0][key])
        drawn = ax.bar(xs, ys, width, label=method)
        ax.bar_label(drawn, fmt="%.2f", fontsize=6)
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xticks(range(len(groups)), groups, rotation=20, fontsize=7, ha="right")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, ncol=2)


def main(paths: list[str], csv_path: Path = HERE / "results.csv",
         figure: Path = HERE / "engines.png") -> None:  # fmt: skip
    rows = load(paths)
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()})

    engines = [r for r in rows if not r["study"]]
    studies = [r for r in rows if r["study"]]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    workloads = list(dict.fromkeys(r["workload"] for r in engines))
    bars(axes[0, 0], engines, workloads, lambda r: r["workload"], "ratio_to_nonprivate",
         "examples/s relative to non-private")  # fmt: skip
    bars(axes[0, 1], engines, workloads, lambda r: r["workload"], "memory_ratio_to_nonprivate",
         "peak memory relative to non-private")  # fmt: skip

    def setting(r: dict) -> str:
        return f"{r['workload']}: {r['label']}"

    settings = list(dict.fromkeys(setting(r) for r in studies))
    bars(axes[1, 0], studies, settings, setting, "ratio_to_reference",
         "examples/s relative to the study's reference non-private")  # fmt: skip
    bars(axes[1, 1], studies, settings, setting, "memory_ratio_to_nonprivate",
         "peak memory relative to non-private, same setting")  # fmt: skip
    fig.suptitle(f"DP engines and Opacus vs non-private, one process per workload "
                 f"({rows[0]['device']})")  # fmt: skip
    fig.tight_layout()
    fig.savefig(figure, dpi=120)
    print(f"wrote {csv_path} and {figure}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--csv", type=Path, default=HERE / "results.csv")
    parser.add_argument("--figure", type=Path, default=HERE / "engines.png")
    args = parser.parse_args()
    main(args.paths, args.csv, args.figure)
