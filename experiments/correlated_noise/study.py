"""Correlated noise against DP-SGD at equal epsilon: one dataset's study (issue 20).

    python experiments/correlated_noise/study.py digits_dp OUT [--mechanisms independent,banded_mf]

For each target epsilon (1, 2, 4, 8) and mechanism: seed 0 at four learning rates (0.5, 1, 2
and 4 times the experiment's default), extended by factors of 2 past whichever edge holds the
best (up to 3 more), the best by validation accuracy, then that learning rate at seeds 1 and
2. Each run is `python run.py +experiment=<exp> noise=<mechanism> ...` in its own
process; a finished run (its summary.json says completed) is not run again, so the study
resumes and a later mechanism adds its rows. The choice of learning rate reads the validation
accuracy: it is tuning outside the accountant, the same for every mechanism (the comparison is
of mechanisms, not a private release). Run it from a checkout nobody edits meanwhile: every run
imports the code as it is when it starts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EPSILONS = (1, 2, 4, 8)
LR_FACTORS = (0.5, 1.0, 2.0, 4.0)  # 2x was chosen most often in a first pass: 4x added
MAX_EXTENSIONS = 3  # beyond the grid's edges, while the best learning rate is at one
DEFAULT_LR = {"digits_dp": 0.01, "mnist1d_dp": 0.005}
# BandMF bands: at most N / E groups (digits: 1,150 / 256 -> 4; mnist1d: 3,600 / 256 -> 14)
MECHANISM_ARGS = {"independent": ["noise=independent"],
                  "banded_mf": ["noise=banded_mf", "noise.bands={bands}"],
                  "blt": ["noise=blt", "noise.buffers=4"]}  # fmt: skip
BANDS = {"digits_dp": 4, "mnist1d_dp": 8}
COMMON = ["logger=none", "extras.print_config=false", "trainer.enable_progress_bar=false"]


def run_one(out: Path, exp: str, mechanism: str, eps: int, lr: float, seed: int) -> dict:
    folder = out / exp / mechanism / f"eps{eps}_lr{lr:g}_seed{seed}"
    summary = folder / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("status") == "completed":
        return json.loads(summary.read_text())
    if folder.exists():  # an interrupted run: start it again from nothing
        shutil.rmtree(folder)
    args = [a.format(bands=BANDS[exp]) for a in MECHANISM_ARGS[mechanism]]
    cmd = [sys.executable, "run.py", f"+experiment={exp}", *args, *COMMON,
           f"privacy.target_epsilon={eps}", f"optimizer.lr={lr:g}", f"seed={seed}",
           f"hydra.run.dir={folder}"]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(summary.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exp", choices=sorted(DEFAULT_LR))
    parser.add_argument("out", type=Path)
    parser.add_argument("--mechanisms", default="independent,banded_mf,blt")
    args = parser.parse_args()
    for mechanism in args.mechanisms.split(","):
        for eps in EPSILONS:
            lrs = [DEFAULT_LR[args.exp] * f for f in LR_FACTORS]
            tried = {lr: run_one(args.out, args.exp, mechanism, eps, lr, 0) for lr in lrs}
            best = max(lrs, key=lambda lr: tried[lr]["val_accuracy"])
            # The best at an edge of the grid: extend the grid that way (by factors of 2, to
            # at most MAX_EXTENSIONS more) until it is inside, the same rule for every cell.
            for _ in range(MAX_EXTENSIONS):
                if best not in (min(tried), max(tried)):
                    break
                lr = best * 2 if best == max(tried) else best / 2
                tried[lr] = run_one(args.out, args.exp, mechanism, eps, lr, 0)
                best = max(tried, key=lambda lr: tried[lr]["val_accuracy"])
            for seed in (1, 2):
                run_one(args.out, args.exp, mechanism, eps, best, seed)
            print(f"{args.exp} {mechanism} eps {eps}: lr {best:g}", flush=True)


if __name__ == "__main__":
    main()
