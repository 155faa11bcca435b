"""`python -m dpresearch.report RUNS_DIR... [--out DIR]`: one HTML page (and a PNG per figure)
from the runs' summary.json / metrics.jsonl / config.yaml, for every dataset among them.
`python -m dpresearch.report --wandb ENTITY/PROJECT`: the same comparison as a wandb Report.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

from dpresearch.report import figures
from dpresearch.report.html import image, page, table
from dpresearch.report.runs import Run, find_runs

RUN_COLUMNS = [("run", "run"), ("dataset", "dataset"), ("method", "method"), ("seed", "seed"),
               ("status", "status"), ("target_epsilon", "target eps"), ("epsilon", "eps spent"),
               ("test_accuracy", "test acc"), ("val_accuracy", "val acc"),
               ("train_examples_per_s", "examples/s"), ("error", "error")]  # fmt: skip
COST_COLUMNS = [("method", "method"), ("runs", "runs"), ("examples_per_s", "examples/s"),
                ("speed_vs_nonprivate", "vs non-private"), ("peak_memory_mb", "peak MB"),
                ("wall_s", "wall s")]  # fmt: skip
STATEMENT_COLUMNS = [("method", "method"), ("runs", "runs"), ("guarantee", "guarantee"),
                     ("sampler", "sampler matches accountant"), ("randomness", "randomness"),
                     ("accesses", "data accesses"), ("not_covered", "released, NOT covered"),
                     ("code", "code")]  # fmt: skip
EPS_COLUMNS = [("method", "method"), ("epsilon", "epsilon"), ("mean", "test acc (mean)"),
               ("std", "std"), ("n", "seeds")]  # fmt: skip


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def run_row(r: Run) -> dict:
    s = r.summary
    return {"run": r.folder.name, "dataset": r.dataset, "method": r.method, "seed": s.get("seed"),
            "status": r.status, "target_epsilon": s.get("target_epsilon"),
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


def build_report(roots: list[Path], out: Path) -> Path:
    runs = find_runs(roots)
    if not runs:
        raise SystemExit(f"no runs (summary.json or config.yaml) under {[str(r) for r in roots]}")
    out.mkdir(parents=True, exist_ok=True)
    by_dataset: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_dataset[r.dataset].append(r)
    counts = defaultdict(int)
    for r in runs:
        counts[r.status] += 1
    sections = [
        "<p>" + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) + " runs from "
        + ", ".join(str(r) for r in roots) + "</p>"
    ]  # fmt: skip
    for dataset, members in sorted(by_dataset.items()):
        name = slug(dataset)
        parts = [f"<h2>{dataset}</h2>"]
        eps = figures.accuracy_vs_epsilon(members)
        if eps:
            path = out / f"accuracy_vs_epsilon_{name}.png"
            figures.plot_accuracy_vs_epsilon(eps, dataset, path)
            parts.append(image(path, f"accuracy vs epsilon ({dataset})"))
            rows = [{"method": m, "epsilon": e, "mean": a, "std": s, "n": n}
                    for m, pts in eps.items() for e, a, s, n in pts]  # fmt: skip
            parts.append(table(rows, EPS_COLUMNS, "accuracy"))
        cost = figures.cost_rows(members)
        if cost:
            path = out / f"cost_{name}.png"
            figures.plot_cost(cost, dataset, path)
            parts.append(image(path, f"throughput per method ({dataset})"))
            parts.append(table(cost, COST_COLUMNS, "cost"))
        path = out / f"curves_{name}.png"
        if figures.plot_curves(members, dataset, path):
            parts.append(image(path, f"learning curves ({dataset})"))
        statements = statement_rows(members)
        if statements:
            parts.append("<h3>Privacy statements</h3>")
            parts.append(table(statements, STATEMENT_COLUMNS, "statements"))
        grid = figures.lr_clip_grid(members)
        if grid:
            path = out / f"heatmap_{name}.png"
            figures.plot_heatmap(grid, dataset, path)
            parts.append(image(path, f"learning rate x clipping threshold ({dataset})"))
        sections.append("".join(parts))
    sections.append("<h2>All runs</h2>" + table([run_row(r) for r in runs], RUN_COLUMNS, "runs"))
    report = out / "report.html"
    report.write_text(page("dpresearch report", sections))
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dpresearch.report", description=__doc__)
    parser.add_argument("runs", nargs="*", type=Path, help="folders holding run folders")
    parser.add_argument("--out", type=Path, default=Path("report"), help="output folder")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="build a wandb Report")
    args = parser.parse_args(argv)
    if args.wandb:
        from dpresearch.report.wandb_report import publish

        print(publish(args.wandb))
        return
    if not args.runs:
        parser.error("give run folders, or --wandb ENTITY/PROJECT")
    print(f"wrote {build_report(args.runs, args.out)}")


if __name__ == "__main__":
    main()
