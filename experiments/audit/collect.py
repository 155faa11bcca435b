"""Collect experiments/audit/raw/*.json into results.csv (tightness), bugs.csv (the bug
table), clean.csv (clean configurations) and audit.png; print the README's tables."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
METHODS = ["steinke", "fdp", "all_iterates"]
CHECKS = ["clipping", "noise", "scale", "sampling", "scope", "accounting"]


def load(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def kind(record: dict) -> str:
    return record["kind"].split(" ")[0]


def write(name: str, rows: list[dict]) -> None:
    if not rows:
        return
    with open(HERE / name, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def tightness(records: dict[str, dict]) -> list[dict]:
    rows = []
    for name, r in records.items():
        if not name.startswith("tight_"):
            continue
        row = {"run": name, "canaries": kind(r), "m": r["canaries"],
               "claimed_epsilon": round(r["claimed_epsilon"], 4)}  # fmt: skip
        for m in METHODS:
            value = r.get(f"epsilon_lower_bound_{m}")
            row[m] = None if value is None else round(value, 4)
        row.update(tightest=round(r["epsilon_lower_bound"], 4), method=r["method"],
                   ratio=round(r["epsilon_lower_bound"] / r["claimed_epsilon"], 3),
                   flagged=";".join(r["flagged"]), cpu_seconds=round(r["cpu_seconds"]),
                   test_accuracy=r["test_accuracy"])  # fmt: skip
        rows.append(row)
    return rows


def verdicts(r: dict) -> dict[str, str]:
    mark = {True: "pass", False: "FLAGGED", None: "-"}
    out = {c["name"]: mark[c["passed"]] for c in r["checks"]}
    out["bound"] = "VIOLATED" if r["violated"] else ("pass" if "bounds" in r else "-")
    return out


def table(records: dict[str, dict], prefix: str) -> list[dict]:
    rows = []
    for name, r in records.items():
        if not name.startswith(prefix) or name.endswith("_first"):
            continue
        v = verdicts(r)
        bound = r.get("epsilon_lower_bound")
        rows.append({"run": name[len(prefix):], "sabotage": r["sabotage"], "canaries": kind(r),
                     **{c: v.get(c, "-") for c in [*CHECKS, "bound"]},
                     "claimed_epsilon": round(r["claimed_epsilon"], 3),
                     "lower_bound": None if bound is None else round(bound, 3),
                     "caught": not r["consistent"],
                     "cpu_seconds": round(r["cpu_seconds"])})  # fmt: skip
    return rows


def figure(tight: list[dict], bugs: list[dict]) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), width_ratios=[1, 1.25])
    gradient = [r for r in tight if r["canaries"] == "gradient"]
    claimed = sorted({round(r["claimed_epsilon"]) for r in gradient})
    styles = {"steinke": ("o", "Steinke et al. 2023"), "fdp": ("s", "f-DP (Mahloujifar 2024)"),
              "all_iterates": ("^", "all iterates, f-DP (Nasr 2023 auditor)")}  # fmt: skip
    for offset, (m, (marker, label)) in zip((-0.12, 0, 0.12), styles.items()):
        means, lows, highs = [], [], []
        for c in claimed:
            values = [r[m] for r in gradient if round(r["claimed_epsilon"]) == c]
            means.append(np.mean(values))
            lows.append(np.mean(values) - min(values))
            highs.append(max(values) - np.mean(values))
        left.errorbar(np.array(claimed) + offset * np.array(claimed) / 4, means,
                      yerr=[lows, highs], marker=marker, capsize=3,
                      label=f"gradient canaries: {label}")  # fmt: skip
    for k, marker in (("example", "D"), ("input", "v")):
        rows = [r for r in tight if r["canaries"] == k]
        left.plot([r["claimed_epsilon"] for r in rows], [r["tightest"] for r in rows], marker,
                  ls=":", label=f"{k} canaries: tightest")  # fmt: skip
    top = max(claimed) * 1.1
    left.plot([0, top], [0, top], "k-", lw=1, label="claimed (a bound above: violated)")
    left.plot([0, top], [0, top / 2], "k--", lw=0.8, label="half the claim (target)")
    left.set_xlabel("claimed epsilon (delta 1e-5)")
    left.set_ylabel("audited lower bound on epsilon (95%)")
    left.set_title("Correct runs on digits: one run each (3 seeds: range)")
    left.legend(fontsize=7)
    cols = [*CHECKS, "bound"]
    code = {"pass": 0, "-": -1, "FLAGGED": 1, "VIOLATED": 1}
    grid = np.array([[code[b[c]] for c in cols] for b in bugs], dtype=float)
    right.imshow(grid, cmap=matplotlib.colors.ListedColormap(["#dddddd", "#cfe8cf", "#e06666"]),
                 vmin=-1, vmax=1, aspect="auto")  # fmt: skip
    right.set_xticks(range(len(cols)), cols, rotation=30, fontsize=8)
    right.set_yticks(range(len(bugs)), [b["run"] for b in bugs], fontsize=8)
    for i, b in enumerate(bugs):
        for j, c in enumerate(cols):
            right.text(j, i, b[c] if b[c] != "-" else "", ha="center", va="center", fontsize=6)
    right.set_title("Injected bugs: which check flags each (red), grey: not applicable")
    fig.tight_layout()
    fig.savefig(HERE / "audit.png", dpi=130)


def markdown(rows: list[dict], keys: list[str]) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join("" if r[k] is None else str(r[k]) for k in keys) + " |"
              for r in rows]  # fmt: skip
    return "\n".join(lines)


def main(folder: str) -> None:
    records = load(Path(folder))
    tight, bugs, clean = tightness(records), table(records, "bug_"), table(records, "clean_")
    write("results.csv", tight)
    write("bugs.csv", bugs)
    write("clean.csv", clean)
    figure(tight, bugs)
    print(markdown(tight, ["run", "claimed_epsilon", *METHODS, "tightest", "ratio",
                           "cpu_seconds"]))  # fmt: skip
    print()
    print(markdown(bugs, ["run", "canaries", *CHECKS, "bound", "caught", "cpu_seconds"]))
    print()
    print(markdown(clean, ["run", *CHECKS, "caught", "cpu_seconds"]))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(HERE / "raw"))
