"""Augmentation multiplicity (De et al. 2022) at equal epsilon (issue 21).

    python experiments/augmentation/study.py OUT

digits_dp (GroupNorm CNN, epsilon 3) with random-shift augmentation, K = 1, 4, 8, 16 views
per example averaged before clipping, three seeds, two budgets:
- equal steps: the default 30 epochs at every K (K times the compute of K = 1);
- equal compute: round(150 / K) of the 150 steps (+trainer.max_steps: about the per-view
  gradients of K = 1); sigma is calibrated for each run's own steps, so every run spends the
  same epsilon.
And K = 1 without augmentation, the recipe's default, for reference.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from experiments.runs import run_one  # noqa: E402

VIEWS = (1, 4, 8, 16)
EPOCHS = 30
STEPS = 150  # digits_dp: 5 steps an epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--budgets", default="equal_compute,equal_steps,none")
    args = parser.parse_args()
    base = ["+experiment=digits_dp", f"trainer.max_epochs={EPOCHS}"]
    for budget in args.budgets.split(","):
        for seed in (0, 1, 2):
            if budget == "none":  # K = 1 without augmentation
                run_one(args.out / "none" / f"k1_seed{seed}",
                        [*base, "dataset.augment=false", f"seed={seed}"])  # fmt: skip
                continue
            for k in VIEWS:
                steps = STEPS if budget == "equal_steps" else round(STEPS / k)
                run_one(args.out / budget / f"k{k}_seed{seed}",
                        [*base, "dataset.augment=true", f"privacy.augmentations={k}",
                         f"+trainer.max_steps={steps}", f"seed={seed}"])  # fmt: skip
        print(f"{budget}: done", flush=True)


if __name__ == "__main__":
    main()
