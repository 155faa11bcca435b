"""Every layer of the zoo x every engine x every clipping function: exact or refused.

A cell is "exact" when the engine passes the self-check on the model AND then matches a
brute-force loop over single examples on a second, unseen batch; "refused" when engine
selection refuses it before training (the message is kept); anything else (a crash, a wrong
gradient that got through) is a failure. Usage: python -m experiments.engine_conformance.conformance
[--out results.csv] [--table table.md]
"""

from __future__ import annotations

import argparse
import csv
import logging
import time
from pathlib import Path

from tests.layer_zoo import CASES, CLIPPING, ENGINES, cell


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="experiments/engine_conformance/results.csv")
    parser.add_argument("--table", default="experiments/engine_conformance/table.md")
    args = parser.parse_args()
    logging.getLogger("dpresearch").setLevel(logging.ERROR)
    rows = []
    start = time.perf_counter()
    for case in CASES:
        for clip_name, clipping in CLIPPING.items():
            for engine in ENGINES:
                r = cell(case, engine, clipping)
                rows.append({"layer": case.name, "clipping": clip_name, "engine": engine, **r})
                if r["outcome"] not in ("exact", "refused"):
                    print(f"{case.name} | {clip_name} | {engine}: {r['outcome']} {r['detail']}")
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    Path(args.table).write_text(table(rows))
    bad = [r for r in rows if r["outcome"] not in ("exact", "refused")]
    print(f"{len(rows)} cells, {len(bad)} crashed or wrong, {time.perf_counter() - start:.0f} s")


def table(rows: list[dict]) -> str:
    """Markdown: one row per layer, one column per engine (fixed clipping; per-layer noted)."""
    lines = ["| layer | " + " | ".join(ENGINES) + " |", "|---" * (len(ENGINES) + 1) + "|"]
    for case in CASES:
        cells = []
        for engine in ENGINES:
            r = next(r for r in rows if r["layer"] == case.name and r["engine"] == engine
                     and r["clipping"] == "fixed")  # fmt: skip
            if r["outcome"] == "exact":
                cells.append("exact" if engine != "auto" else f"-> {r['ran']}")
            else:
                cells.append(r["outcome"])
        lines.append(f"| {case.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
