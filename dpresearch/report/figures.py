"""The report's figures (matplotlib), one set per dataset; each returns the data it drew."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dpresearch.report.heatmap import draw_grid  # noqa: E402
from dpresearch.report.runs import Run  # noqa: E402


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def accuracy_vs_epsilon(runs: list[Run]) -> dict[str, list[tuple[float, float, float, int]]]:
    """method -> [(epsilon, mean test accuracy, std over seeds, n)], grouped by target epsilon
    (the spent epsilon of a group is its mean)."""
    groups: dict[tuple[str, float], list[Run]] = defaultdict(list)
    for r in runs:
        if r.status == "completed" and r.summary.get("test_accuracy") is not None:
            key = r.summary.get("target_epsilon") or r.epsilon
            groups[r.method, float(key) if key is not None else math.nan].append(r)
    out: dict[str, list] = defaultdict(list)
    for (method, _), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        acc = mean_std([float(m.summary["test_accuracy"]) for m in members])
        eps = statistics.fmean(m.epsilon for m in members)
        out[method].append((eps, acc[0], acc[1], len(members)))
    return dict(out)


def plot_accuracy_vs_epsilon(data: dict, dataset: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method, points in data.items():
        finite = [p for p in points if math.isfinite(p[0])]
        if finite:
            xs, ys, es = zip(*[(p[0], p[1], p[2]) for p in finite])
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=method)
        for p in points:
            if math.isinf(p[0]):  # non-private: a band at its mean +- std
                ax.axhline(p[1], ls="--", color="gray", label=f"{method} (eps = inf)")
                ax.axhspan(p[1] - p[2], p[1] + p[2], color="gray", alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("epsilon spent (delta fixed per run)")
    ax.set_ylabel("test accuracy (mean +- std over seeds)")
    ax.set_title(f"{dataset}: accuracy vs epsilon")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cost_rows(runs: list[Run]) -> list[dict]:
    """Per method: mean examples/s, peak memory and wall time, and speed relative to the
    non-private runs of the same dataset."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        if r.status == "completed" and r.summary.get("train_examples_per_s"):
            groups[r.method].append(r)
    rows = []
    for method, members in sorted(groups.items()):

        def mean(key: str, members=members) -> float:
            return statistics.fmean(float(m.summary.get(key) or 0) for m in members)

        rows.append({"method": method, "runs": len(members),
                     "examples_per_s": mean("train_examples_per_s"),
                     "peak_memory_mb": mean("peak_memory_mb"),
                     "wall_s": mean("wall_s")})  # fmt: skip
    base = [r for r in rows if r["method"].startswith("non-private")]
    for row in rows:
        row["speed_vs_nonprivate"] = (
            row["examples_per_s"] / base[0]["examples_per_s"] if base else None
        )
    return rows


def plot_cost(rows: list[dict], dataset: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    bars = ax.bar([r["method"] for r in rows], [r["examples_per_s"] for r in rows])
    ax.bar_label(bars, labels=[f"{r['speed_vs_nonprivate']:.2f}x" if r["speed_vs_nonprivate"]
                               else "" for r in rows], fontsize=8)  # fmt: skip
    ax.set_ylabel("training examples/s (label: vs non-private)")
    ax.set_title(f"{dataset}: throughput per method")
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(runs: list[Run], dataset: str, path: Path) -> int:
    """Validation accuracy per epoch, one line per run (colour by method); returns #lines."""
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    colours: dict[str, str] = {}
    drawn = 0
    for r in runs:
        pts = [(m["epoch"], m["val_acc"]) for m in r.metrics
               if m.get("stage") == "val" and m.get("val_acc") is not None]  # fmt: skip
        if not pts:
            continue
        colour = colours.setdefault(r.method, f"C{len(colours) % 10}")
        label = r.method if drawn == 0 or r.method not in [*colours][:-1] else None
        ax.plot(*zip(*pts), color=colour, alpha=0.6, lw=1, label=label)
        drawn += 1
    handles = {h.get_label(): h for h in ax.get_lines() if not h.get_label().startswith("_")}
    ax.legend(handles.values(), handles.keys(), fontsize=7)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"{dataset}: learning curves ({drawn} runs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def lr_clip_grid(runs: list[Run]) -> dict | None:
    """Mean validation accuracy over (lr, max_grad_norm) when runs vary in both."""
    cells: dict[tuple[float, float], list[float]] = defaultdict(list)
    for r in runs:
        lr, clip = r.param("optimizer.lr"), r.param("clipping.max_grad_norm")
        if r.status == "completed" and lr is not None and clip is not None:
            if r.summary.get("val_accuracy") is not None and r.summary.get("private"):
                cells[float(lr), float(clip)].append(float(r.summary["val_accuracy"]))
    lrs = sorted({k[0] for k in cells})
    clips = sorted({k[1] for k in cells})
    if len(lrs) < 2 or len(clips) < 2:
        return None
    return {"lrs": lrs, "clips": clips,
            "values": {k: statistics.fmean(v) for k, v in cells.items()}}  # fmt: skip


def plot_heatmap(grid: dict, dataset: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    im = draw_grid(ax, grid["values"])
    ax.set_xlabel("learning rate")
    ax.set_ylabel("clipping threshold")
    fig.colorbar(im, ax=ax, label="validation accuracy")
    ax.set_title(f"{dataset}: learning rate x clipping threshold")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
