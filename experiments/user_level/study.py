"""Example-level against user-level DP at equal epsilon (issue 21).

    python experiments/user_level/study.py OUT [--datasets digits,sentiment]

Per dataset, epsilon (2, 8) and seed (0, 1, 2): example-level DP (each example one unit), and
user-level DP over synthetic users (dataset.users, uniform and skewed), each user contributing
up to privacy.examples_per_user=8 examples clipped together once. The sample rate is kept
about equal (expected users per step / users = expected examples per step / examples), so
sigma and the steps are about equal too; what differs is the unit the guarantee protects and
clips. The learning rate is each experiment's default for every unit (not tuned: a tuned
rate per unit would widen no gap reported here by construction, see the README).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from experiments.runs import run_one  # noqa: E402

EPSILONS = (2, 8)
DATASETS = {  # experiment, users, expected examples per step, expected users per step
    "digits": ("digits_dp", 200, 256, 40),
    "sentiment": ("minilm_sentiment_bias_only_dp", 200, 64, 8),
}
UNITS = {"example": None, "user_uniform": 0.0, "user_skewed": 1.0}  # user_skew
PER_USER = 8


def args_for(dataset: str, unit: str, eps: int, seed: int) -> list[str]:
    exp, users, per_step, users_per_step = DATASETS[dataset]
    args = [f"+experiment={exp}", f"privacy.target_epsilon={eps}", f"seed={seed}"]
    if UNITS[unit] is None:
        return [*args, f"sampler.expected_batch_size={per_step}"]
    return [*args, "privacy.unit=user", f"dataset.users={users}",
            f"dataset.user_skew={UNITS[unit]}", f"privacy.examples_per_user={PER_USER}",
            f"sampler.expected_batch_size={users_per_step}"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--datasets", default="digits,sentiment")
    args = parser.parse_args()
    for dataset in args.datasets.split(","):
        for eps in EPSILONS:
            for unit in UNITS:
                for seed in (0, 1, 2):
                    folder = args.out / dataset / unit / f"eps{eps}_seed{seed}"
                    run_one(folder, args_for(dataset, unit, eps, seed))
                print(f"{dataset} eps {eps} {unit}: done", flush=True)


if __name__ == "__main__":
    main()
