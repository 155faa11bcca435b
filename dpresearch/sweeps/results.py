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


def trial_rows(study: optuna.Study, selection: str = "nonprivate") -> list[dict]:
    """One row per trial; ``selection`` says in every row whether the sweep's choice among
    them is private (value: the DP score) or not (value: the objective, exact)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({
            "number": t.number, "state": t.state.name, "value": t.value, "selection": selection,
            **{f"param:{k}": v for k, v in t.params.items()},
            "reason": t.user_attrs.get("reason", ""),
            "output_dir": t.user_attrs.get("output_dir", ""),
        })  # fmt: skip
    return rows


def write_trials(study: optuna.Study, path: Path, selection: str = "nonprivate") -> list[dict]:
    rows = trial_rows(study, selection)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return rows


NAMES = {"PRUNED": "pruned", "FAIL": "failed"}


def best_row(done: list[dict], direction: str) -> dict:
    pick = max if direction == "maximize" else min
    return pick(done, key=lambda r: r["value"])


def _axis(ax, which: str, dist) -> None:
    """Span the whole search space on this axis (log when the parameter is searched in log)."""
    if isinstance(dist, (optuna.distributions.FloatDistribution,
                         optuna.distributions.IntDistribution)):  # fmt: skip
        getattr(ax, f"set_{which}scale")("log" if dist.log else "linear")
        low, high = dist.low, dist.high
        pad = (high / low) ** 0.04 if dist.log and low > 0 else None
        lims = (low / pad, high * pad) if pad else (low - 0.04 * (high - low),
                                                     high + 0.04 * (high - low))  # fmt: skip
        getattr(ax, f"set_{which}lim")(*lims)


def plot(
    rows: list[dict],
    space: dict,
    objective: str,
    path: Path,
    direction: str = "maximize",
) -> dict | None:
    """The objective over the search space: for two parameters every trial at its point, over
    the whole space (completed coloured by value, pruned and failed marked, the best starred;
    a full grid as cells); for one, the objective against the parameter. ``path``'s .csv
    holds the completed trials as plotted. Returns what was drawn (None: nothing)."""
    params = list(space)
    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    if not done or len(params) not in (1, 2):
        return None
    with open(path.with_suffix(".csv"), "w", newline="") as f:  # the figure's data, as plotted
        writer = csv.writer(f)
        writer.writerow(["number", *params, objective])
        writer.writerows([r["number"], *(r[f"param:{p}"] for p in params), r["value"]]
                         for r in done)  # fmt: skip
    best = best_row(done, direction)
    placed = [r for r in rows if all(r.get(f"param:{p}") is not None for p in params)]
    others = {state: [r for r in placed if r["state"] == state] for state in ("PRUNED", "FAIL")}
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    if len(params) == 1:
        pts = sorted((r[f"param:{params[0]}"], r["value"]) for r in done)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="completed")
        ax.plot(best[f"param:{params[0]}"], best["value"], "*", ms=16, color="C3", label="best")
        for state, marker in (("PRUNED", "x"), ("FAIL", "X")):
            if others[state]:  # no value: a rug along the bottom
                xs = [r[f"param:{params[0]}"] for r in others[state]]
                ax.plot(xs, [min(p[1] for p in pts)] * len(xs), marker, ls="none",
                        color="gray" if state == "PRUNED" else "C3",
                        label=f"{NAMES[state]} ({len(xs)})")  # fmt: skip
        _axis(ax, "x", space[params[0]])
        ax.set_xlabel(params[0])
        ax.set_ylabel(objective)
    else:
        xs = [r[f"param:{params[0]}"] for r in done]
        ys = [r[f"param:{params[1]}"] for r in done]
        vals = [r["value"] for r in done]
        grid = len(set(xs)) * len(set(ys)) == len(done) and len(set(xs)) > 1 < len(set(ys))
        if grid:  # a full grid: cells, the best outlined
            im = draw_grid(ax, dict(zip(zip(xs, ys), vals)), fontsize=7)
            i = sorted(set(xs)).index(best[f"param:{params[0]}"])
            j = sorted(set(ys)).index(best[f"param:{params[1]}"])
            ax.add_patch(plt.Rectangle((i - 0.5, j - 0.5), 1, 1, fill=False, ec="C3", lw=2.5))
        else:  # sampled points over the whole search space
            im = ax.scatter(xs, ys, c=vals, cmap="viridis", s=60, edgecolors="k", zorder=3)
            for state, marker, colour in (("PRUNED", "x", "gray"), ("FAIL", "X", "C3")):
                if others[state]:
                    ax.scatter([r[f"param:{params[0]}"] for r in others[state]],
                               [r[f"param:{params[1]}"] for r in others[state]],
                               marker=marker, color=colour, s=50, zorder=2,
                               label=f"{NAMES[state]} ({len(others[state])})")  # fmt: skip
            ax.scatter([best[f"param:{params[0]}"]], [best[f"param:{params[1]}"]], marker="*",
                       s=320, facecolors="none", edgecolors="C3", linewidths=2, zorder=4,
                       label=f"best (trial {best['number']})")  # fmt: skip
            _axis(ax, "x", space[params[0]])
            _axis(ax, "y", space[params[1]])
        fig.colorbar(im, ax=ax, label=objective)
        ax.set_xlabel(params[0])
        ax.set_ylabel(params[1])
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    tally = {"completed": len(done), "pruned": len(others["PRUNED"]),
             "failed": len(others["FAIL"])}  # fmt: skip
    counts = ", ".join(f"{n} {state}" for state, n in tally.items() if n)
    ax.set_title(f"{counts} trials\nbest ({direction}) {objective} {best['value']:.4g} at trial "
                 f"{best['number']}", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"best": best["number"], **tally, "xlim": ax.get_xlim(), "ylim": ax.get_ylim()}


def plot_history(study: optuna.Study, path: Path) -> bool:
    """Optuna's own optimization-history figure (objective per trial and the best so far)."""
    import warnings

    from optuna.visualization.matplotlib import plot_optimization_history

    if not any(
        t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False)
    ):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = plot_optimization_history(study)
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=110)
    plt.close(ax.figure)
    return True
