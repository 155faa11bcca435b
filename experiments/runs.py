"""What the studies under experiments/ share: one `python run.py ...` per run in its own
folder, skipped when its summary says completed (so a study resumes), and the summaries read
back."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["logger=none", "extras.print_config=false", "trainer.enable_progress_bar=false"]


def run_one(folder: Path, args: list[str]) -> dict:
    """``python run.py <args>`` writing into ``folder``; its summary.json (a completed run is
    not run again; an interrupted one starts again from nothing)."""
    summary = folder / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("status") == "completed":
        return json.loads(summary.read_text())
    if folder.exists():
        shutil.rmtree(folder)
    cmd = [sys.executable, "run.py", *args, *QUIET, f"hydra.run.dir={folder}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(summary.read_text())


def completed(out: Path, depth: int) -> list[tuple[Path, dict]]:
    """(folder, summary) of every completed run ``depth`` folders below ``out``."""
    found = sorted(out.glob("/".join(["*"] * depth) + "/summary.json"))
    summaries = [(p.parent, json.loads(p.read_text())) for p in found]
    return [(folder, s) for folder, s in summaries if s.get("status") == "completed"]


def write_table(path: Path, rows: list[dict]) -> dict[tuple, list[dict]]:
    """Every run as a row of ``path`` (CSV), and the rows grouped by their cell: the values
    of all columns before ``seed``."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    keys = list(rows[0])[: list(rows[0]).index("seed")]
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault(tuple(r[k] for k in keys), []).append(r)
    return cells
