"""What a sweep leaves for people: trials.csv, and a heatmap of the objective over two log-scale
parameters (e.g. learning rate x clipping threshold) or a curve over one."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402

from dpresearch.report.heatmap import draw_grid  # noqa: E402


def trial_rows(study: optuna.Study) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({
            "number": t.number, "state": t.state.name, "value": t.value,
            **{f"param:{k}": v for k, v in t.params.items()},
            "reason": t.user_attrs.get("reason", ""),
            "output_dir": t.user_attrs.get("output_dir", ""),
        })  # fmt: skip
    return rows


def write_trials(study: optuna.Study, path: Path) -> list[dict]:
    rows = trial_rows(study)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def plot(rows: list[dict], params: list[str], objective: str, path: Path) -> bool:
    """Heatmap for two parameters (completed trials, log axes), a curve for one."""
    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    if not done or len(params) not in (1, 2):
        return False
    with open(path.with_suffix(".csv"), "w", newline="") as f:  # the figure's data, as plotted
        writer = csv.writer(f)
        writer.writerow(["number", *params, objective])
        writer.writerows([r["number"], *(r[f"param:{p}"] for p in params), r["value"]]
                         for r in done)  # fmt: skip
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if len(params) == 1:
        pts = sorted((r[f"param:{params[0]}"], r["value"]) for r in done)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-")
        ax.set_xscale("log")
        ax.set_xlabel(params[0])
        ax.set_ylabel(objective)
    else:
        xs = [r[f"param:{params[0]}"] for r in done]
        ys = [r[f"param:{params[1]}"] for r in done]
        vals = [r["value"] for r in done]
        grid = len(set(xs)) * len(set(ys)) == len(done) and len(set(xs)) > 1 < len(set(ys))
        if grid:  # a full grid: cells
            im = draw_grid(ax, dict(zip(zip(xs, ys), vals)), fontsize=7)
        else:  # sampled points: a scatter heatmap on log axes
            im = ax.scatter(xs, ys, c=vals, cmap="viridis", s=60, edgecolors="k")
            ax.set_xscale("log")
            ax.set_yscale("log")
        fig.colorbar(im, ax=ax, label=objective)
        ax.set_xlabel(params[0])
        ax.set_ylabel(params[1])
    best = max(done, key=lambda r: r["value"])
    ax.set_title(f"{len(done)} completed trials; best {objective} {best['value']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
