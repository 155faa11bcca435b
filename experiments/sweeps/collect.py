"""From the sweeps' trials.csv: results.csv and sweeps.png (the fixed-clipping heatmap, the
automatic-clipping curve, and the adaptive-clipping heatmap over the INITIAL threshold), and
the best of each."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
LR, CLIP = "param:optimizer.lr", "param:clipping.max_grad_norm"


def read(folder: str) -> list[dict]:
    rows = list(csv.DictReader((Path(folder) / "trials.csv").open()))
    return [r for r in rows if r["state"] == "COMPLETE"]


def heatmap(ax, rows: list[dict], title: str, ylabel: str):
    lrs = sorted({float(r[LR]) for r in rows})
    clips = sorted({float(r[CLIP]) for r in rows})
    cells = [[float("nan")] * len(lrs) for _ in clips]
    for r in rows:
        cells[clips.index(float(r[CLIP]))][lrs.index(float(r[LR]))] = float(r["value"])
    im = ax.imshow(cells, origin="lower", cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i, row in enumerate(cells):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="w")
    ax.set_xticks(range(len(lrs)), [f"{v:g}" for v in lrs])
    ax.set_yticks(range(len(clips)), [f"{v:g}" for v in clips])
    ax.set_xlabel("learning rate")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}: {len(rows)} runs")
    return im


def main(fixed_dir: str, auto_dir: str, adaptive_dir: str | None = None) -> None:
    fixed, auto = read(fixed_dir), read(auto_dir)
    adaptive = read(adaptive_dir) if adaptive_dir else []
    with open(HERE / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clipping", "lr", "max_grad_norm", "val_accuracy"])
        for r in fixed:
            writer.writerow(["fixed", r[LR], r[CLIP], round(float(r["value"]), 4)])
        for r in auto:
            writer.writerow(["automatic", r[LR], 1.0, round(float(r["value"]), 4)])
        for r in adaptive:  # max_grad_norm: the initial threshold
            writer.writerow(["adaptive", r[LR], r[CLIP], round(float(r["value"]), 4)])
    panels = 3 if adaptive else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2))
    a, b = axes[0], axes[1]
    im = heatmap(a, fixed, "fixed clipping", "clipping threshold C")
    fig.colorbar(im, ax=a, label="validation accuracy")
    pts = sorted((float(r[LR]), float(r["value"])) for r in auto)
    b.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="automatic (C=1)")
    best_fixed = max(float(r["value"]) for r in fixed)
    b.axhline(best_fixed, color="gray", ls="--", label=f"best fixed, 2-D grid ({best_fixed:.3f})")
    b.set_xscale("log")
    b.set_ylim(0, 1)
    b.set_xlabel("learning rate")
    b.set_ylabel("validation accuracy")
    b.set_title(f"automatic clipping: {len(auto)} runs")
    b.legend(fontsize=8)
    if adaptive:
        heatmap(axes[2], adaptive, "adaptive clipping (median)", "initial threshold C_0")
    fig.suptitle("digits, DP epsilon 3, SGD: the threshold search that automatic and adaptive "
                 "clipping save")  # fmt: skip
    fig.tight_layout()
    fig.savefig(HERE / "sweeps.png", dpi=120)
    best_auto = max(float(r["value"]) for r in auto)
    print(f"best fixed {best_fixed:.4f} over {len(fixed)} runs; "
          f"best automatic {best_auto:.4f} over {len(auto)} runs")  # fmt: skip
    if adaptive:
        best = max(adaptive, key=lambda r: float(r["value"]))
        print(f"best adaptive {float(best['value']):.4f} over {len(adaptive)} runs "
              f"(lr {best[LR]}, initial C {best[CLIP]})")  # fmt: skip
        for lr in sorted({float(r[LR]) for r in adaptive}):
            column = [float(r["value"]) for r in adaptive if float(r[LR]) == lr]
            print(f"  lr {lr:g}: adaptive accuracy over initial C from {min(column):.3f} to "
                  f"{max(column):.3f}")  # fmt: skip


if __name__ == "__main__":
    main(*sys.argv[1:4])
