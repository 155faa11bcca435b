"""Privacy of hyperparameter tuning: run a DP mechanism a random number K of times, release the
best run (Papernot and Steinke, "Hyperparameter Tuning with Renyi Differential Privacy", ICLR
2022, arXiv 2110.03620).

Releasing the best of a FIXED number of DP runs costs about that many times the privacy of one
run; drawing K at random from a truncated negative binomial (TNB) or Poisson distribution costs
a constant overhead instead. What this module provides:

- ``TrialCount``: the distribution of K (TNB with eta in (-1, inf) and gamma in (0, 1), its
  eta=0 logarithmic and eta=1 geometric cases, or Poisson with mean mu), its pmf, mean and
  variance, and a draw from a secure source (``os.urandom``) by inversion.
- ``tuning_rdp``: the procedure's RDP curve from one trial's (Theorem 2 for TNB, Theorem 6 for
  Poisson), then ``rdp_to_epsilon`` for (epsilon, delta).
- ``trial_rdp``: one trial's RDP curve: the Poisson-subsampled Gaussian steps of DP-SGD plus the
  Gaussian noisy count that releases its validation score (composed; zero when the validation
  split is declared public).
- ``calibrate_trial_noise``: the smallest training noise multiplier whose WHOLE procedure meets
  a total epsilon.

The trials must be independent repetitions of one mechanism: the hyperparameters drawn from a
fixed distribution (random search, not an adaptive sampler that reads earlier scores), every
trial with the same sample rate, steps and noise.
"""

from __future__ import annotations

import functools
import math
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from opacus.accountants.analysis import rdp as rdp_analysis

from dpresearch.privacy.accounting import MAX_SIGMA, MIN_SIGMA, AccountingError, check_mechanism

# Renyi orders: dense where tuning's optimal orders lie (2-40), sparse beyond.
ORDERS = tuple(
    [1.0 + x / 20 for x in range(1, 40)]
    + [3.0 + x / 4 for x in range(0, 69)]
    + list(range(21, 65))
    + [80, 96, 128, 192, 256, 384, 512, 1024]
)
DISTRIBUTIONS = ("truncated_negative_binomial", "poisson")
MAX_K = 1_000_000


class SecureRandom(random.Random):
    """Uniform draws from ``os.urandom`` (53 bits): nobody can predict or replay K."""

    def random(self) -> float:
        return (int.from_bytes(os.urandom(7), "big") >> 3) * 2.0**-53

    def seed(self, *args, **kwargs) -> None:  # noqa: D102 - random.Random calls it
        return None


@dataclass(frozen=True)
class TrialCount:
    """The distribution of the number of trials K. ``truncated_negative_binomial``:
    P[K=k] = (1-gamma)^k / (gamma^-eta - 1) * prod_{l<k} (l+eta)/(l+1) for k >= 1 (eta != 0),
    and (1-gamma)^k / (k log(1/gamma)) for eta = 0 (the paper's Definition 1). ``poisson``:
    K ~ Poisson(mean), where K = 0 releases nothing."""

    distribution: str
    eta: float | None = None
    gamma: float | None = None
    mean_trials: float | None = None  # Poisson's mu (for TNB: derived from eta and gamma)

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise AccountingError(
                f"distribution={self.distribution!r}: choose one of {list(DISTRIBUTIONS)}"
            )
        if self.distribution == "poisson":
            if not (isinstance(self.mean_trials, (int, float)) and self.mean_trials > 0):
                raise AccountingError(f"poisson needs mean_trials > 0, got {self.mean_trials!r}")
            return
        if not (isinstance(self.eta, (int, float)) and -1 < self.eta < math.inf):
            raise AccountingError(f"eta must be in (-1, inf), got {self.eta!r}")
        if not (isinstance(self.gamma, (int, float)) and 0 < self.gamma < 1):
            raise AccountingError(f"gamma must be in (0, 1), got {self.gamma!r}")

    @classmethod
    def from_config(
        cls, distribution: str, eta: float | None = None, gamma: float | None = None,
        mean_trials: float | None = None,
    ) -> TrialCount:  # fmt: skip
        """TNB from (eta, gamma), or from (eta, mean_trials) with gamma solved for; Poisson
        from mean_trials. Exactly one of gamma and mean_trials for TNB."""
        if distribution != "truncated_negative_binomial":
            return cls(distribution, mean_trials=None if mean_trials is None else
                       float(mean_trials))  # fmt: skip
        if eta is None:
            raise AccountingError("truncated_negative_binomial needs eta (e.g. 1: geometric)")
        if (gamma is None) == (mean_trials is None):
            raise AccountingError(
                "truncated_negative_binomial takes exactly one of gamma and mean_trials "
                f"(got gamma={gamma}, mean_trials={mean_trials})"
            )
        if gamma is None:
            gamma = gamma_for_mean(float(eta), float(mean_trials))
        return cls(distribution, eta=float(eta), gamma=float(gamma))

    @property
    def mean(self) -> float:
        if self.distribution == "poisson":
            return float(self.mean_trials)
        eta, g = self.eta, self.gamma
        if eta == 0:
            return (1 / g - 1) / math.log(1 / g)
        return eta * (1 - g) / (g * (1 - g**eta))

    @property
    def variance(self) -> float:
        if self.distribution == "poisson":
            return float(self.mean_trials)
        eta, g = self.eta, self.gamma
        if eta == 0:  # logarithmic: E[K^2] = (1-g) / (g^2 log(1/g))
            return (1 - g) / (g * g * math.log(1 / g)) - self.mean**2
        # The negative binomial NB(eta, g) conditioned on K >= 1.
        second = (eta * (1 - g) / g**2 + (eta * (1 - g) / g) ** 2) / (1 - g**eta)
        return second - self.mean**2

    def pmf(self, k: int) -> float:
        if self.distribution == "poisson":
            mu = float(self.mean_trials)
            return math.exp(k * math.log(mu) - mu - math.lgamma(k + 1)) if k >= 0 else 0.0
        if k < 1:
            return 0.0
        eta, g = self.eta, self.gamma
        if eta == 0:
            return math.exp(k * math.log1p(-g)) / (k * math.log(1 / g))
        # prod_{l<k} (l+eta)/(l+1) = Gamma(k+eta) / (Gamma(eta) k!); lgamma is log|Gamma|, and
        # for eta < 0 the product and gamma^-eta - 1 are both negative.
        log_prod = math.lgamma(k + eta) - math.lgamma(eta) - math.lgamma(k + 1)
        return math.exp(k * math.log1p(-g) + log_prod) / abs(g**-eta - 1)

    def draw(self, rng: random.Random | None = None) -> int:
        """K by inversion of the cdf, from ``rng`` (default: the secure source)."""
        u = (rng or SecureRandom()).random()
        k = 0 if self.distribution == "poisson" else 1
        cdf = self.pmf(k)
        while cdf < u and k < MAX_K:
            k += 1
            cdf += self.pmf(k)
        return k

    def to_dict(self) -> dict:
        out = asdict(self)
        out["mean_trials"], out["variance"] = self.mean, self.variance
        return out


def gamma_for_mean(eta: float, mean: float) -> float:
    """The TNB's gamma whose mean is ``mean`` (the mean falls as gamma grows): bisection,
    rounded to the larger-mean side, whose privacy cost is larger (conservative)."""
    if not mean > 1:
        raise AccountingError(f"mean_trials must be > 1 for the truncated negative binomial, "
                              f"got {mean}")  # fmt: skip
    lo, hi = 1e-15, 1 - 1e-15
    for _ in range(200):
        mid = (lo + hi) / 2
        if TrialCount("truncated_negative_binomial", eta, mid).mean > mean:
            lo = mid
        else:
            hi = mid
    return lo


def sgm_rdp(
    orders: Sequence[float], sample_rate: float, noise_multiplier: float, steps: int
) -> np.ndarray:
    """RDP of ``steps`` Poisson-subsampled Gaussian steps (Mironov et al. 2019, as Opacus)."""
    return np.asarray(rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier,
                                               steps=steps, orders=list(orders)))  # fmt: skip


def trial_rdp(
    orders: Sequence[float], sample_rate: float, noise_multiplier: float, steps: int,
    score_noise: float | None,
) -> np.ndarray:  # fmt: skip
    """One trial's RDP: training, composed with its score (a count of correct validation
    predictions, sensitivity 1, plus N(0, score_noise^2): RDP order/(2 score_noise^2)).
    ``score_noise`` None: the score reads a validation split declared public, no cost."""
    rdp = sgm_rdp(orders, sample_rate, noise_multiplier, steps)
    if score_noise is not None:
        if not score_noise > 0:
            raise AccountingError(f"score noise must be > 0 (or the split public), got "
                                  f"{score_noise}")  # fmt: skip
        rdp = rdp + np.asarray(orders) / (2 * score_noise**2)
    return rdp


def pure_dp_rdp(orders: Sequence[float], epsilon: float) -> np.ndarray:
    """RDP of an epsilon-DP mechanism: min(epsilon, order epsilon^2 / 2) (Bun and Steinke
    2016, Prop. 3.3: epsilon-DP implies epsilon^2/2-zCDP)."""
    if not (epsilon >= 0 and math.isfinite(epsilon)):
        raise AccountingError(f"trial epsilon must be a finite number >= 0, got {epsilon}")
    return np.minimum(epsilon, np.asarray(orders, dtype=float) * epsilon**2 / 2)


def rdp_to_epsilon(orders: Sequence[float], rdp: Sequence[float], delta: float) -> float:
    """(epsilon, delta) from an RDP curve: eps = min over orders of
    rdp + log(1 - 1/a) - (log delta + log a)/(a - 1) (Canonne, Kamath, Steinke 2020, Prop. 12);
    orders <= 1 are skipped."""
    return max(min(_eps_at(a, r, delta) for a, r in zip(orders, rdp)), 0.0)


def rdp_to_delta(orders: Sequence[float], rdp: Sequence[float], epsilon: float) -> float:
    """The smallest delta at ``epsilon`` from an RDP curve: Prop. 12 of Canonne, Kamath and
    Steinke solved for delta, and the total-variation bound sqrt(1 - exp(-rdp)) (Pinsker's
    companion by Bretagnolle-Huber, valid at every order as KL <= D_a)."""
    best = 1.0
    for a, r in zip(orders, rdp):
        if a < 1 or not math.isfinite(r):
            continue
        if r <= 0:
            return 0.0
        best = min(best, math.sqrt(-math.expm1(-r)))
        if a > 1:
            log_d = (a - 1) * (r - epsilon + math.log1p(-1 / a)) - math.log(a)
            best = min(best, math.exp(min(log_d, 0.0)))
    return best


def tuning_rdp(orders: Sequence[float], rdp: Sequence[float], count: TrialCount) -> np.ndarray:
    """The RDP curve of releasing the best of K runs, K ~ ``count``, from one run's curve
    (at orders > 1; order 1 is inf).

    TNB (Theorem 2): eps'(l) = eps(l) + (1+eta) min_{lh >= 1}[(1-1/lh) eps(lh) + log(1/gamma)/lh]
    + log E[K]/(l-1); lh = 1 is always allowed (its term is log(1/gamma)).
    Poisson (Theorem 6): eps'(l) = eps(l) + mu delta_hat + log(mu)/(l-1), with delta_hat the
    run's delta at eps_hat = log(1 + 1/(l-1)).
    Then RDP's monotonicity in the order: eps'(l) <= eps'(l') for l <= l'."""
    orders = np.asarray(orders, dtype=float)
    rdp = np.asarray(rdp, dtype=float)
    if orders.shape != rdp.shape:
        raise AccountingError("orders and rdp must have the same length")
    out = np.full_like(orders, np.inf)
    mean = count.mean
    if count.distribution == "poisson":
        for i, a in enumerate(orders):
            if a <= 1:
                continue
            delta_hat = rdp_to_delta(orders, rdp, math.log1p(1 / (a - 1)))
            out[i] = rdp[i] + mean * delta_hat + math.log(mean) / (a - 1)
    else:
        log_inv_gamma = -math.log(count.gamma)
        terms = [log_inv_gamma]  # lh = 1
        terms += [(1 - 1 / a) * r + log_inv_gamma / a
                  for a, r in zip(orders, rdp) if a > 1 and math.isfinite(r)]  # fmt: skip
        overhead = (1 + count.eta) * min(terms)
        for i, a in enumerate(orders):
            if a > 1:
                out[i] = rdp[i] + overhead + math.log(mean) / (a - 1)
    # Monotone in the order: the bound at a larger order holds at a smaller one.
    return np.minimum.accumulate(out[::-1])[::-1]


@dataclass(frozen=True)
class TuningAccount:
    """What a private selection spends: per trial and for the whole procedure."""

    total_epsilon: float
    delta: float
    trial_epsilon: float  # one trial (training + score), RDP, same delta
    training_epsilon_rdp: float  # one trial's training alone, RDP
    count: dict
    score_noise: float | None
    order: float  # the Renyi order that gave total_epsilon

    def to_dict(self) -> dict:
        return asdict(self)


@functools.lru_cache(maxsize=1024)
def tuning_account(
    sample_rate: float, noise_multiplier: float, steps: int, delta: float, count: TrialCount,
    score_noise: float | None,
) -> TuningAccount:  # fmt: skip
    """Per-trial and total epsilon of a private selection among ~``count`` DP-SGD trials."""
    steps = check_mechanism(sample_rate, noise_multiplier, steps, delta)
    if noise_multiplier == 0:
        raise AccountingError("private selection needs noise: noise multiplier is 0")
    per_trial = trial_rdp(ORDERS, sample_rate, noise_multiplier, steps, score_noise)
    total_epsilon, order = total_epsilon_of(per_trial, count, delta)
    return TuningAccount(
        total_epsilon=total_epsilon,
        delta=delta,
        trial_epsilon=rdp_to_epsilon(ORDERS, per_trial, delta),
        training_epsilon_rdp=rdp_to_epsilon(
            ORDERS, sgm_rdp(ORDERS, sample_rate, noise_multiplier, steps), delta
        ),
        count=count.to_dict(),
        score_noise=score_noise,
        order=order,
    )


def total_epsilon_of(
    per_trial: Sequence[float], count: TrialCount, delta: float
) -> tuple[float, float]:
    """The whole procedure's epsilon at ``delta`` from one trial's RDP curve on ``ORDERS``,
    and the Renyi order that gives it."""
    total = tuning_rdp(ORDERS, per_trial, count)
    best = min(range(len(ORDERS)), key=lambda i: _eps_at(ORDERS[i], total[i], delta))
    return rdp_to_epsilon(ORDERS, total, delta), float(ORDERS[best])


def _eps_at(a: float, r: float, delta: float) -> float:
    if a <= 1 or not math.isfinite(r):
        return math.inf
    return r + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1)


def selection_floor(count: TrialCount, score_noise: float | None, delta: float) -> float:
    """What the selection costs with no training at all (the scores and the random number of
    trials): a total budget at or below it cannot be met by any training noise."""
    scores = np.zeros(len(ORDERS))
    if score_noise is not None:
        scores = np.asarray(ORDERS) / (2 * float(score_noise) ** 2)
    return total_epsilon_of(scores, count, delta)[0]


def calibrate_trial_noise(
    total_epsilon: float, sample_rate: float, steps: int, delta: float, count: TrialCount,
    score_noise: float | None, rtol: float = 0.005,
) -> float:  # fmt: skip
    """The smallest training noise multiplier (to ``rtol``) whose whole tuning procedure
    spends at most ``total_epsilon``."""
    if not (total_epsilon > 0) or math.isinf(total_epsilon):
        raise AccountingError(f"total epsilon must be a positive finite number, got "
                              f"{total_epsilon}")  # fmt: skip
    steps = check_mechanism(sample_rate, 1.0, steps, delta)

    def total(sigma: float) -> float:
        return tuning_account(sample_rate, sigma, steps, delta, count, score_noise).total_epsilon

    floor = total(MAX_SIGMA)
    if floor > total_epsilon:
        raise AccountingError(
            f"a private selection among ~{count.mean:g} trials costs at least {floor:.3g} even "
            f"with noise {MAX_SIGMA:g} (the score's noise and the number of trials alone): "
            f"raise privacy.target_epsilon above {floor:.3g}, lower the mean number of trials, "
            "raise the score's noise, or declare the validation split public"
        )
    if total(MIN_SIGMA) <= total_epsilon:
        raise AccountingError(
            f"total epsilon {total_epsilon} is reached with noise below {MIN_SIGMA}; set "
            "privacy.noise_multiplier explicitly instead"
        )
    lo, hi = MIN_SIGMA, MAX_SIGMA  # total(lo) > target >= total(hi)
    while hi / lo > 1 + rtol:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if total(mid) > total_epsilon else (lo, mid)
    return hi
