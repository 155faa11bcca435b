"""`python -m dpresearch.report RUNS_DIR... [--out DIR]`: one HTML page (and a PNG per figure)
from the runs' summary.json / metrics.jsonl / config.yaml, for every dataset among them.
`python -m dpresearch.report --wandb ENTITY/PROJECT`: the same comparison as a wandb Report.
"""

from __future__ import annotations

import argparse
import html
import re
from collections import defaultdict
from pathlib import Path

from dpresearch.report import figures
from dpresearch.report.figures import finished
from dpresearch.report.groups import group_runs
from dpresearch.report.html import image, page, table
from dpresearch.report.runs import Run, find_runs
from dpresearch.report.selections import COLUMNS as SELECTION_COLUMNS
from dpresearch.report.selections import find_selections
from dpresearch.report.selections import plot as plot_selections
from dpresearch.report.selections import points as selection_points
from dpresearch.tracking.summary import noise_mechanism

RUN_COLUMNS = [("run", "run folder"), ("dataset", "dataset"), ("method", "method"),
               ("noise", "noise"), ("lr", "lr"), ("clip", "clip"), ("seed", "seed"),
               ("status", "status"),
               ("shown", "in figures"), ("target_epsilon", "target eps"), ("epsilon", "eps spent"),
               ("test_accuracy", "test acc"), ("val_accuracy", "val acc"),
               ("train_examples_per_s", "examples/s"), ("error", "error")]  # fmt: skip
COST_COLUMNS = [("group", "group"), ("runs", "runs"), ("examples_per_s", "examples/s"),
                ("examples_per_s_std", "std"), ("load_per_cpu", "max load per CPU"),
                ("device", "device"), ("peak_memory_mb", "peak MB"),
                ("wall_s", "wall s")]  # fmt: skip
STATEMENT_COLUMNS = [("method", "method"), ("runs", "runs"), ("guarantee", "guarantee"),
                     ("sampler", "sampler matches accountant"), ("randomness", "randomness"),
                     ("accesses", "data accesses"), ("not_covered", "released, NOT covered"),
                     ("code", "code")]  # fmt: skip
EPS_COLUMNS = [("series", "line"), ("epsilon", "epsilon spent"), ("mean", "test acc (mean)"),
               ("std", "std"), ("n", "runs (seeds)")]  # fmt: skip
COST_CAVEAT = (
    "<p class='caveat'>Each run was timed in its own process, on a machine whose load "
    "differed between runs (column <i>max load per CPU</i>: above 1, the run shared its CPUs). "
    "These numbers are not speed ratios between methods. For ratios, run "
    "<code>python -m dpresearch.benchmark</code>: it times every method in one process, "
    "interleaved, on the same training step.</p>"
)
KINDS = ("sweeps", "debug")  # run kinds kept out of the figures unless --include names them


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def excluded(r: Run, include: tuple[str, ...]) -> str | None:
    """Why ``r`` stays out of the figures (None: it is in)."""
    if r.sweep_trial and "sweeps" not in include:
        return "sweep trial (--include sweeps)"
    if r.debug and "debug" not in include:
        return "debug run (--include debug)"
    return None


def run_row(r: Run, root: Path | None, include: tuple[str, ...]) -> dict:
    s = r.summary
    try:
        name = str(r.folder.relative_to(root)) if root else str(r.folder)
    except ValueError:
        name = str(r.folder)
    return {"run": name, "dataset": r.dataset, "method": r.method, "seed": s.get("seed"),
            "noise": noise_mechanism(s),
            "lr": r.param("optimizer.lr"), "clip": r.param("clipping.max_grad_norm"),
            "status": r.status, "shown": excluded(r, include) or "yes",
            "target_epsilon": s.get("target_epsilon"),
            "epsilon": r.epsilon if r.status == "completed" else s.get("epsilon"),
            "test_accuracy": s.get("test_accuracy"), "val_accuracy": s.get("val_accuracy"),
            "train_examples_per_s": s.get("train_examples_per_s"),
            "error": (s.get("error") or "")[:160]}  # fmt: skip


def statement_rows(members: list[Run]) -> list[dict]:
    """Each method's privacy statements, summarised (values that differ across its runs are
    all listed, so a mixed group shows it)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in members:
        if r.summary.get("privacy_statement"):
            groups[r.method].append(r.summary["privacy_statement"])

    def values(items) -> str:
        return "; ".join(sorted({str(v) for v in items if v is not None})) or "-"

    rows = []
    for method, statements in sorted(groups.items()):
        rows.append({
            "method": method, "runs": len(statements),
            "guarantee": values(s.get("guarantee") for s in statements),
            "sampler": values((s.get("sampler") or {}).get("accountant_assumption_holds")
                              for s in statements),
            "randomness": values((s.get("randomness") or {}).get("mode") for s in statements),
            "accesses": values(f"{a.get('sweep')}; validation: {a.get('validation')}"
                               for s in statements for a in [s.get("data_accesses") or {}]),
            "not_covered": values(x["what"] for s in statements for x in s["released"]
                                  if not x["covered"]),
            "code": values(f"{(s.get('code') or {}).get('commit', '?')[:10]}"
                           f"{' (dirty)' if (s.get('code') or {}).get('dirty') else ''}"
                           for s in statements),
        })  # fmt: skip
    return rows


def _root(r: Run, roots: list[Path]) -> Path | None:
    return next((root for root in roots if r.folder.is_relative_to(root)), None)


def dataset_section(dataset: str, members: list[Run], out: Path) -> str:
    name = slug(dataset)
    parts = [f"<h2>{html.escape(dataset)}</h2>"]
    groups = group_runs(finished(members, "test_accuracy"))
    eps = figures.accuracy_vs_epsilon(groups)
    if eps:
        path = out / f"accuracy_vs_epsilon_{name}.png"
        figures.plot_accuracy_vs_epsilon(eps, dataset, path)
        parts.append(image(path, f"accuracy vs epsilon ({dataset})"))
        rows = [{"series": m, "epsilon": e, "mean": a, "std": s, "n": n}
                for m, pts in eps.items() for e, a, s, n in pts]  # fmt: skip
        parts.append(table(rows, EPS_COLUMNS, "accuracy"))
    cost_groups = group_runs(finished(members, "train_examples_per_s"))
    cost = figures.cost_rows(cost_groups)
    if cost:
        path = out / f"cost_{name}.png"
        figures.plot_cost(cost_groups, dataset, path)
        parts.append(image(path, f"per-run throughput and machine load ({dataset})"))
        parts.append(COST_CAVEAT + table(cost, COST_COLUMNS, "cost"))
    path = out / f"curves_{name}.png"
    if figures.plot_curves(group_runs(members), dataset, path):
        parts.append(image(path, f"learning curves ({dataset})"))
    statements = statement_rows(members)
    if statements:
        parts.append("<h3>Privacy statements</h3>")
        parts.append(table(statements, STATEMENT_COLUMNS, "statements"))
    for i, grid in enumerate(figures.lr_clip_grids(members)):
        path = out / f"heatmap_{name}{'_' + str(i + 1) if i else ''}.png"
        figures.plot_heatmap(grid, dataset, path)
        parts.append(image(path, f"learning rate x clipping threshold ({dataset})"))
    return "".join(parts)


def selections_section(rows: list[dict], out: Path) -> str:
    """Sweeps' released models: a private selection's winner at the sweep's total epsilon, a
    non-private one at its trial's epsilon, labelled NOT accounted."""
    if not rows:
        return ""
    parts = ["<h2>Released models of sweeps</h2><p>Each sweep's winner "
             "(<code>selection.json</code>). A <b>private selection</b> releases its winner at "
             "the epsilon of the whole sweep; a <b>non-private selection</b> (the best trial by "
             "exact validation accuracy) is drawn at its trial's epsilon, which does NOT account "
             "the choice among trials.</p>"]  # fmt: skip
    for dataset in sorted({r["dataset"] for r in rows}):
        members = [r for r in rows if r["dataset"] == dataset]
        path = out / f"selections_{slug(dataset)}.png"
        plot_selections(selection_points(members), f"released models of sweeps ({dataset})",
                        path)  # fmt: skip
        parts.append(image(path, f"released models of sweeps ({dataset})"))
        parts.append(table(members, SELECTION_COLUMNS, "selections"))
    return "".join(parts)


def build_report(roots: list[Path], out: Path, include: tuple[str, ...] = ()) -> Path:
    """The HTML report. Runs are pooled only with the seeds of their own config; sweep trials
    and debug runs stay out of the figures unless ``include`` names them ("sweeps", "debug"),
    and every run is listed in the final table with whether it is shown."""
    unknown = set(include) - set(KINDS)
    if unknown:
        raise SystemExit(f"--include takes {', '.join(KINDS)}; got {', '.join(sorted(unknown))}")
    runs = find_runs(roots)
    if not runs:
        raise SystemExit(f"no runs (summary.json or config.yaml) under {[str(r) for r in roots]}")
    out.mkdir(parents=True, exist_ok=True)
    shown = [r for r in runs if excluded(r, include) is None]
    by_dataset: dict[str, list[Run]] = defaultdict(list)
    for r in shown:
        by_dataset[r.dataset].append(r)
    counts = defaultdict(int)
    for r in runs:
        counts[r.status] += 1
    left_out = defaultdict(int)
    for r in runs:
        if (why := excluded(r, include)) is not None:
            left_out[why] += 1
    sections = [
        "<p>" + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) + " runs from "
        + ", ".join(html.escape(str(r)) for r in roots) + ". A point pools only the seeds of "
        "one configuration, at the epsilon those runs spent; <i>n</i> is their number.</p>"
    ]  # fmt: skip
    if left_out:
        sections.append("<p>Not in the figures: " + ", ".join(
            f"{n} {why}" for why, n in sorted(left_out.items())) + ".</p>")  # fmt: skip
    for dataset, members in sorted(by_dataset.items()):
        sections.append(dataset_section(dataset, members, out))
    sections.append(selections_section(find_selections(roots), out))
    rows = [run_row(r, _root(r, roots), include) for r in runs]
    sections.append("<h2>All runs</h2>" + table(rows, RUN_COLUMNS, "runs"))
    report = out / "report.html"
    report.write_text(page("dpresearch report", sections))
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dpresearch.report", description=__doc__)
    parser.add_argument("runs", nargs="*", type=Path, help="folders holding run folders")
    parser.add_argument("--out", type=Path, default=Path("report"), help="output folder")
    parser.add_argument("--include", default="", metavar="KINDS",
                        help="also draw these run kinds, comma-separated: sweeps (Optuna "
                             "trials), debug (fast_dev_run, overfit, limited batches)")  # fmt: skip
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="build a wandb Report")
    args = parser.parse_args(argv)
    if args.wandb:
        from dpresearch.report.wandb_report import publish

        print(publish(args.wandb))
        return
    if not args.runs:
        parser.error("give run folders, or --wandb ENTITY/PROJECT")
    include = tuple(k.strip() for k in args.include.split(",") if k.strip())
    print(f"wrote {build_report(args.runs, args.out, include)}")


if __name__ == "__main__":
    main()
