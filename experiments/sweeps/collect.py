"""From the two sweeps' trials.csv: results.csv and sweeps.png (the fixed-clipping heatmap next
to the automatic-clipping curve), and the best of each."""

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


def main(fixed_dir: str, auto_dir: str) -> None:
    fixed, auto = read(fixed_dir), read(auto_dir)
    with open(HERE / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clipping", "lr", "max_grad_norm", "val_accuracy"])
        for r in fixed:
            writer.writerow(["fixed", r[LR], r[CLIP], round(float(r["value"]), 4)])
        for r in auto:
            writer.writerow(["automatic", r[LR], 1.0, round(float(r["value"]), 4)])
    lrs = sorted({float(r[LR]) for r in fixed})
    clips = sorted({float(r[CLIP]) for r in fixed})
    cells = [[float("nan")] * len(lrs) for _ in clips]
    for r in fixed:
        cells[clips.index(float(r[CLIP]))][lrs.index(float(r[LR]))] = float(r["value"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    im = a.imshow(cells, origin="lower", cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i, row in enumerate(cells):
        for j, v in enumerate(row):
            a.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="w")
    a.set_xticks(range(len(lrs)), [f"{v:g}" for v in lrs])
    a.set_yticks(range(len(clips)), [f"{v:g}" for v in clips])
    a.set_xlabel("learning rate")
    a.set_ylabel("clipping threshold C")
    a.set_title(f"fixed clipping: {len(fixed)} runs")
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
    fig.suptitle("digits, DP epsilon 3, SGD: the search automatic clipping saves")
    fig.tight_layout()
    fig.savefig(HERE / "sweeps.png", dpi=120)
    best_auto = max(float(r["value"]) for r in auto)
    print(f"best fixed {best_fixed:.4f} over {len(fixed)} runs; "
          f"best automatic {best_auto:.4f} over {len(auto)} runs")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
