"""One trial of a private selection: its noise calibrated for the WHOLE tuning procedure, and
its score released through its own mechanism.

The sweeper (dpresearch/sweeps/) draws the number of trials and picks the winner; this is what
each trial does for the accounting to hold (dpresearch/privacy/tuning.py):
- ``privacy.target_epsilon`` is the TOTAL budget: the trial's training noise is calibrated so
  that releasing the best of K ~ the sweep's distribution of trials spends at most that;
- the score the selection reads is the count of correct validation predictions plus Gaussian
  noise (sensitivity 1 under add/remove of one validation example), divided by the validation
  split's size, which is public like the training set's (the sample rate already reads it);
  or, when the user declared the split public (``dataset.public_validation=true``), the exact
  accuracy, at no cost.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from dpresearch.privacy.noise import secure_normal
from dpresearch.privacy.spec import PrivacyConfigError
from dpresearch.privacy.tuning import (
    TrialCount,
    TuningAccount,
    calibrate_trial_noise,
    tuning_account,
)

SCORE_SEED_OFFSET = 1_000_003  # the score's noise stream is not the training noise's


@dataclass(frozen=True)
class PrivateSelection:
    count: TrialCount
    score_noise: float | None  # None: the validation split is declared public

    @classmethod
    def from_trial(cls, trial: Mapping[str, Any] | None, public_validation: bool
                   ) -> PrivateSelection | None:  # fmt: skip
        """The selection a sweep trial takes part in (``sweep_trial.selection=private`` and
        its ``tuning`` node, written by the sweeper), or None for any other run."""
        if not trial or trial.get("selection", "nonprivate") != "private":
            return None
        tuning = dict(trial.get("tuning") or {})
        count = TrialCount.from_config(tuning.get("distribution", "truncated_negative_binomial"),
                                       tuning.get("eta"), tuning.get("gamma"),
                                       tuning.get("mean_trials"))  # fmt: skip
        noise = tuning.get("score_noise")
        if public_validation:
            return cls(count, None)
        if noise is None or not float(noise) > 0:
            raise PrivacyConfigError(
                f"hydra.sweeper.tuning.score_noise={noise}: a private selection reads each "
                "trial's validation score, which is private data; give it noise (e.g. 5: the "
                "std of the noisy count of correct predictions) or declare the validation "
                "split public with dataset.public_validation=true"
            )
        return cls(count, float(noise))

    def calibrate(self, total_epsilon: float, sample_rate: float, steps: int,
                  delta: float) -> float:  # fmt: skip
        return calibrate_trial_noise(total_epsilon, sample_rate, steps, delta, self.count,
                                     self.score_noise)  # fmt: skip

    def account(self, sample_rate: float, noise_multiplier: float, steps: int,
                delta: float) -> TuningAccount:  # fmt: skip
        return tuning_account(sample_rate, noise_multiplier, steps, delta, self.count,
                              self.score_noise)  # fmt: skip

    def mechanism(self) -> dict:
        if self.score_noise is None:
            return {"kind": "public_validation",
                    "note": "exact validation accuracy: the split is declared public "
                            "(dataset.public_validation=true)"}  # fmt: skip
        note = (
            "count of correct validation predictions + N(0, std^2), divided by the public "
            "validation size; sensitivity 1 (add/remove one example)"
        )
        return {"kind": "gaussian_count", "noise_std": self.score_noise, "note": note}

    def score(self, accuracy: float, n_val: int, seed: int | None) -> float:
        """The released score from the exact validation accuracy; ``seed`` None draws the
        noise from the secure source (privacy.randomness=secure)."""
        correct = round(accuracy * n_val)
        if self.score_noise is None:
            return correct / n_val
        if seed is None:
            noise = float(secure_normal(1, self.score_noise)[0])
        else:
            gen = torch.Generator().manual_seed(seed + SCORE_SEED_OFFSET)
            noise = float(torch.normal(0.0, self.score_noise, (1,), generator=gen,
                                       dtype=torch.float64)[0])  # fmt: skip
        value = (correct + noise) / n_val
        return value if math.isfinite(value) else -math.inf
