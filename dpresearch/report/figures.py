"""The report's figures (matplotlib), one set per dataset; each answers one question and
returns the data it drew. Runs are pooled only within a ``Group`` (one config, many seeds)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from dpresearch.report.groups import Group, group_runs, series  # noqa: E402
from dpresearch.report.heatmap import draw_grid  # noqa: E402
from dpresearch.report.runs import Run  # noqa: E402

MARKERS = "osD^v<>ph*X"
LINES = ("-", "--", "-.", ":")
JITTER = 0.02  # points of overlapping lines are drawn up to 2% apart on the epsilon axis
MAX_FACETS = 12


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def finished(runs: list[Run], key: str) -> list[Run]:
    """Runs that finished with ``key`` (debug runs reach here only when the report includes
    them)."""
    return [
        r for r in runs if r.status in ("completed", "debug") and r.summary.get(key) is not None
    ]


def accuracy_vs_epsilon(groups: list[Group]) -> dict[str, list[tuple[float, float, float, int]]]:
    """line label -> [(epsilon, mean test accuracy, std over seeds, n)]. A line joins groups
    that differ only in the privacy budget; each point's epsilon is the one its runs spent
    (equal within a group by construction)."""
    out: dict[str, list] = {}
    for label, members in series(groups).items():
        points = []
        for g in members:
            accs = g.values("test_accuracy")
            if accs:
                points.append((g.epsilon, *mean_std(accs), len(accs)))
        if points:
            out[label] = points
    return out


def plot_accuracy_vs_epsilon(data: dict, dataset: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    private = [label for label, pts in data.items() if any(math.isfinite(p[0]) for p in pts)]
    for i, label in enumerate(private):
        pts = [p for p in data[label] if math.isfinite(p[0])]
        shift = 1 + JITTER * (i - (len(private) - 1) / 2) / max(len(private) - 1, 1)
        xs = [p[0] * shift for p in pts]
        ax.errorbar(xs, [p[1] for p in pts], yerr=[p[2] for p in pts], capsize=3,
                    marker=MARKERS[i % len(MARKERS)], ls=LINES[(i // 10) % len(LINES)],
                    color=f"C{i % 10}", label=label, markerfacecolor="none")  # fmt: skip
        for x, p in zip(xs, pts):
            ax.annotate(f"n={p[3]}", (x, p[1]), textcoords="offset points", xytext=(4, -10),
                        fontsize=6, color=f"C{i % 10}")  # fmt: skip
    for j, (label, pts) in enumerate((k, v) for k, v in data.items() if k not in private):
        for p in pts:  # non-private: a band at its mean +- std
            ax.axhline(p[1], ls=LINES[j % len(LINES)], color="gray",
                       label=f"{label} (eps = inf, n={p[3]})")  # fmt: skip
            ax.axhspan(p[1] - p[2], p[1] + p[2], color="gray", alpha=0.12)
    ax.set_xscale("log")
    ticks = sorted({round(p[0], 2) for label in private for p in data[label]})
    if ticks:  # label the epsilons the points sit at (log minor labels collide on short ranges)
        thinned = [t for i, t in enumerate(ticks) if i == 0 or t > 1.15 * ticks[i - 1]]
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(thinned, [f"{t:g}" for t in thinned])
    ax.set_xlabel("epsilon spent by the runs of each point (points offset <= 2% to show overlaps)")
    ax.set_ylabel("test accuracy (mean +- std over seeds)")
    ax.set_title(f"{dataset}: accuracy vs epsilon")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the legend beside the axes
    plt.close(fig)


def load_per_cpu(run: Run) -> float | None:
    """The machine's 1-minute load average per CPU while the run trained (the larger of its
    start and end): above 1, the run shared its CPUs."""
    machine = run.summary.get("machine") or {}
    loads = [machine.get(k) for k in ("load_1m_start", "load_1m_end")]
    loads = [x for x in loads if isinstance(x, (int, float))]
    if not loads or not machine.get("cpus"):
        return None
    return max(loads) / float(machine["cpus"])


def cost_rows(groups: list[Group]) -> list[dict]:
    """Per group: examples/s (mean, std), peak memory, wall time, and the machine load the
    runs saw. No ratio between groups: each run was timed in its own process."""
    rows = []
    for g in groups:
        members = finished(g.runs, "train_examples_per_s")
        if not members:
            continue
        rate = mean_std([float(r.summary["train_examples_per_s"]) for r in members])
        loads = [x for x in map(load_per_cpu, members) if x is not None]
        machines = [r.summary.get("machine") or {} for r in members]
        devices = sorted({str(m.get("device", "?")) for m in machines})
        rows.append({
            "group": g.label, "runs": len(members), "examples_per_s": rate[0],
            "examples_per_s_std": rate[1],
            "peak_memory_mb": statistics.fmean(float(r.summary.get("peak_memory_mb") or 0)
                                               for r in members),
            "wall_s": statistics.fmean(float(r.summary.get("wall_s") or 0) for r in members),
            "load_per_cpu": max(loads) if loads else None, "device": ", ".join(devices),
        })  # fmt: skip
    return rows


def plot_cost(groups: list[Group], dataset: str, path: Path) -> int:
    """Each run's examples/s against the machine load it saw, one marker per group: shows
    what the per-run numbers can and cannot say. Returns the points drawn."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    drawn = 0
    for i, g in enumerate(groups):
        members = finished(g.runs, "train_examples_per_s")
        pts = [(load_per_cpu(r), float(r.summary["train_examples_per_s"])) for r in members]
        pts = [(x if x is not None else math.nan, y) for x, y in pts]
        if pts:
            ax.scatter(*zip(*pts), marker=MARKERS[i % len(MARKERS)], color=f"C{i % 10}",
                       label=g.label, facecolors="none" if i % 2 else None)  # fmt: skip
            drawn += len(pts)
    ax.axvline(1.0, color="gray", ls=":", lw=1)
    ax.set_xlabel("machine load per CPU during the run (1-minute average; > 1: CPUs shared)")
    ax.set_ylabel("training examples/s")
    ax.set_title(f"{dataset}: per-run throughput (separate processes, not a speed ratio)",
                 fontsize=9)  # fmt: skip
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the legend beside the axes
    plt.close(fig)
    return drawn


def curves(run: Run) -> list[tuple[int, float]]:
    return [(m["epoch"], m["val_acc"]) for m in run.metrics
            if m.get("stage") == "val" and m.get("val_acc") is not None]  # fmt: skip


def plot_curves(groups: list[Group], dataset: str, path: Path) -> int:
    """Validation accuracy per epoch: one panel per group (its seeds thin, their mean bold),
    at most MAX_FACETS panels, the groups with the best final accuracy first. Returns the
    number of panels."""
    with_curves = [(g, [c for c in map(curves, g.runs) if c]) for g in groups]
    with_curves = [(g, cs) for g, cs in with_curves if cs]
    if not with_curves:
        return 0
    with_curves.sort(key=lambda gc: -statistics.fmean(c[-1][1] for c in gc[1]))
    shown = with_curves[:MAX_FACETS]
    cols = min(3, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows + 0.6), sharey=True,
                             squeeze=False)  # fmt: skip
    for ax, (g, cs) in zip(axes.flat, shown):
        for c in cs:
            ax.plot(*zip(*c), color="C0", alpha=0.35, lw=1)
        by_epoch: dict[int, list[float]] = defaultdict(list)
        for c in cs:
            for epoch, acc in c:
                by_epoch[epoch].append(acc)
        epochs = sorted(by_epoch)
        ax.plot(epochs, [statistics.fmean(by_epoch[e]) for e in epochs], color="C0", lw=2)
        status = ", ".join(sorted({r.status for r in g.runs}))
        eps = "n/a" if math.isnan(g.epsilon) else f"{g.epsilon:.3g}"
        ax.set_title(f"{_wrap(g.label)}\neps {eps}, n={len(cs)} ({status})", fontsize=6)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    more = len(with_curves) - len(shown)
    fig.suptitle(f"{dataset}: validation accuracy per epoch"
                 + (f" ({more} more groups in the table)" if more else ""), fontsize=9)  # fmt: skip
    fig.supxlabel("epoch", fontsize=8)
    fig.supylabel("validation accuracy", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the legend beside the axes
    plt.close(fig)
    return len(shown)


def _wrap(text: str, width: int = 48) -> str:
    lines, line = [], ""
    for part in text.split(", "):
        if line and len(line) + len(part) + 2 > width:
            lines.append(line + ",")
            line = part
        else:
            line = f"{line}, {part}" if line else part
    return "\n".join([*lines, line])


GRID_KEYS = ("optimizer.lr", "clipping.max_grad_norm")


def lr_clip_grids(runs: list[Run]) -> list[dict]:
    """Validation accuracy over (lr, max_grad_norm), one map per setting that the runs share
    apart from those two (so runs at different epsilon are never averaged into one cell);
    each cell is the mean over seeds. Only settings varying in both get a map."""
    done = [r for r in finished(runs, "val_accuracy") if r.summary.get("private")]
    done = [r for r in done if all(r.param(k) is not None for k in GRID_KEYS)]
    out = []
    for family in group_runs(done, drop=GRID_KEYS):
        by_cell = group_runs(family.runs)
        cells = {(float(g.runs[0].param(GRID_KEYS[0])), float(g.runs[0].param(GRID_KEYS[1]))):
                 (statistics.fmean(g.values("val_accuracy")), g.n) for g in by_cell}  # fmt: skip
        if len({k[0] for k in cells}) < 2 or len({k[1] for k in cells}) < 2:
            continue
        epsilons = sorted({g.epsilon for g in by_cell})
        marked = any(  # public only when every run's summary says so
            "val_acc" in r.summary.get("nonprivate_metrics", ["val_acc"]) for r in family.runs
        )
        out.append({"label": family.label, "epsilons": epsilons, "nonprivate": marked,
                    "values": {k: v[0] for k, v in cells.items()},
                    "n": {k: v[1] for k, v in cells.items()}})  # fmt: skip
    return out


def plot_heatmap(grid: dict, dataset: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    im = draw_grid(ax, grid["values"], counts=grid["n"])
    ax.set_xlabel("learning rate")
    ax.set_ylabel("clipping threshold")
    privacy = "NOT private" if grid.get("nonprivate") else "public validation split"
    fig.colorbar(im, ax=ax, label=f"validation accuracy (mean over seeds; {privacy})")
    eps = ", ".join(f"{e:.3g}" for e in grid["epsilons"])
    ax.set_title(f"{dataset}: learning rate x clipping threshold\n{_wrap(grid['label'], 70)}; "
                 f"eps {eps}", fontsize=7)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the legend beside the axes
    plt.close(fig)
