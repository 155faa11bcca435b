"""The accuracy-vs-epsilon points of each report (its `accuracy` table), as a markdown table."""

from __future__ import annotations

import sys
from pathlib import Path

from dpresearch.report.html import Tables


def main(folders: list[str]) -> None:
    print("| report | line | epsilon spent | test acc (mean) | runs |")
    print("|---|---|---|---|---|")
    for folder in folders:
        parsed = Tables()
        parsed.feed((Path(folder) / "report.html").read_text())
        for row in parsed.tables.get("accuracy", []):
            print(f"| {Path(folder).name} | {row['series']} | {row['epsilon']} | {row['mean']} "
                  f"| {row['n']} |")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
