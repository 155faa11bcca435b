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

from dpresearch.module import classification_losses
from dpresearch.privacy.self_check import SelfCheck
from dpresearch.privacy.spec import (
    AutomaticClipping,
    FixedClipping,
    PerLayerClipping,
    PrivacyConfigError,
)
from dpresearch.privacy.validation import select_engine
from tests.layer_zoo import CASES, Case

ENGINES = ("auto", "bk", "hooks", "ghost", "vmap")
CLIPPING = {
    "fixed": FixedClipping(max_grad_norm=0.3),
    "automatic": AutomaticClipping(max_grad_norm=0.3),
    "per_layer": PerLayerClipping(max_grad_norm=0.3),
}


def cell(case: Case, engine: str, clipping) -> dict:
    model = case.model()
    check = SelfCheck(model, classification_losses, case.batch(5, seed=0), clipping).run
    try:
        chosen, _ = select_engine(model, engine, clipping.per_layer, check)
    except PrivacyConfigError as err:
        return {"outcome": "refused", "ran": "", "detail": str(err)}
    except Exception as err:  # noqa: BLE001 - a crash is a failed cell
        return {"outcome": "CRASH", "ran": "", "detail": f"{type(err).__name__}: {err}"}
    unseen = SelfCheck(model, classification_losses, case.batch(7, seed=1), clipping).run(chosen)
    if unseen.passed:
        return {"outcome": "exact", "ran": chosen, "detail": f"{unseen.max_rel_error:.1e}"}
    return {"outcome": "WRONG", "ran": chosen, "detail": unseen.reason()}


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
