"""What a published seed costs: with privacy.randomness=seeded, the seed reproduces the Poisson
batches, so an adversary knows which steps each example joined and the amplification by
subsampling is gone. For the default run (digits, epsilon 3, seed 0), the most-sampled
example's steps are composed as unamplified Gaussian mechanisms (exactly).

    python experiments/accounting_check/seed_leak.py
"""

from __future__ import annotations

import json

import numpy as np

from dpresearch.data.samplers import PoissonSampling
from dpresearch.privacy.accounting import calibrate_noise, compute_epsilon, gaussian_epsilon

NUM_TRAIN, BATCH, STEPS, DELTA, TARGET, SEED = 1294, 256, 150, 1e-5, 3.0, 0  # the default run


def main() -> None:
    q = BATCH / NUM_TRAIN
    sigma = calibrate_noise(TARGET, q, STEPS, DELTA)
    sampler = PoissonSampling(expected_batch_size=BATCH).build(NUM_TRAIN, seed=SEED)
    joins = np.zeros(NUM_TRAIN, dtype=int)
    taken = 0
    while taken < STEPS:
        for batch in sampler:
            joins[batch] += 1
            taken += 1
            if taken == STEPS:
                break
    k = int(joins.max())
    print(json.dumps({
        "noise_multiplier": sigma, "steps": STEPS,
        "claimed_epsilon": compute_epsilon(q, sigma, STEPS, DELTA).epsilon,
        "most_sampled_example_joins": k,
        "epsilon_knowing_the_batches": gaussian_epsilon(sigma, k, DELTA),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
