"""Epsilon for the Poisson-subsampled Gaussian mechanism, and noise calibration.

Two accountants:
- ``prv``: the PRV accountant (Gopi et al. 2021, package ``prv-accountant``). It returns an
  interval [lower, upper] that contains the true epsilon; we report ``upper`` as *the* epsilon
  so a reported guarantee is never optimistic.
- ``rdp``: Renyi DP (Mironov 2017) through Opacus' analysis; an upper bound, looser than PRV.

The PRV discretises the privacy loss on a grid whose size grows with the number of steps and
with epsilon. At large budgets the fixed 0.01 error of common wrappers needs billions of grid
points (we have seen the process killed for memory). So the epsilon error is chosen relative to
the budget and capped by a grid size; where even that fails, RDP answers and the result says so.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from opacus.accountants.analysis import rdp as rdp_analysis

ACCOUNTANTS = ("prv", "rdp")
RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 128, 256, 512, 1024]
MAX_GRID_POINTS = 3_000_000  # about 25 MB per float64 array; composition needs a handful
MIN_SIGMA, MAX_SIGMA = 0.1, 1000.0


class AccountingError(ValueError):
    """An accounting request that cannot be answered (the message says what to change)."""


@dataclass(frozen=True)
class EpsilonResult:
    """Epsilon with its provenance. ``epsilon`` is the guaranteed (upper) value."""

    epsilon: float
    epsilon_lower: float | None
    epsilon_estimate: float | None
    epsilon_upper: float | None
    accountant: str
    requested_accountant: str
    note: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def check_mechanism(sample_rate: float, noise_multiplier: float, steps: int, delta: float) -> None:
    """Refuse parameters outside the mechanism's domain, saying which and why."""
    if not (0.0 < sample_rate <= 1.0) or math.isnan(sample_rate):
        raise AccountingError(f"sample rate must be in (0, 1], got {sample_rate}")
    if math.isnan(noise_multiplier) or noise_multiplier < 0:
        raise AccountingError(f"noise multiplier must be >= 0, got {noise_multiplier}")
    if steps < 0 or int(steps) != steps:
        raise AccountingError(f"steps must be a non-negative integer, got {steps}")
    if not (0.0 < delta < 1.0):
        raise AccountingError(f"delta must be in (0, 1), got {delta}")


def rdp_epsilon(sample_rate: float, noise_multiplier: float, steps: int, delta: float) -> float:
    rdp = rdp_analysis.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=RDP_ORDERS
    )
    with warnings.catch_warnings():  # "optimal order is the largest alpha": still a valid bound
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = rdp_analysis.get_privacy_spent(orders=RDP_ORDERS, rdp=rdp, delta=delta)
    return float(eps)


def _prv_grid_points(domain: float, eps_error: float, steps: int, delta_error: float) -> float:
    mesh = eps_error / math.sqrt(steps / 2 * math.log(12 / delta_error))
    return 2 * domain / mesh


def _prv_epsilon(
    sample_rate: float, noise_multiplier: float, steps: int, delta: float, eps_hint: float
) -> tuple[float, float, float]:
    # Imported here: prv_accountant warns on import-time numpy overflow in some versions.
    from prv_accountant import PRVAccountant
    from prv_accountant.accountant import compute_safe_domain_size
    from prv_accountant.privacy_random_variables import (
        GaussianMechanism,
        PoissonSubsampledGaussianMechanism,
    )

    if sample_rate >= 1.0:
        prv = GaussianMechanism(noise_multiplier=noise_multiplier)
    else:
        prv = PoissonSubsampledGaussianMechanism(
            sampling_probability=sample_rate, noise_multiplier=noise_multiplier
        )
    delta_error = delta / 1000
    # Error 0.01 for moderate budgets, 0.2% of the budget above 5.
    eps_error = max(0.01, 2e-3 * eps_hint)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        domain = compute_safe_domain_size([prv], [steps], eps_error, delta_error)
        points = _prv_grid_points(domain, eps_error, steps, delta_error)
        if points > MAX_GRID_POINTS:
            eps_error *= points / MAX_GRID_POINTS
            domain = compute_safe_domain_size([prv], [steps], eps_error, delta_error)
        if not math.isfinite(domain) or eps_error > 0.02 * max(eps_hint, 1.0):
            raise ArithmeticError(
                f"PRV grid too large at this budget (epsilon error would be {eps_error:.3g})"
            )
        acc = PRVAccountant(
            prvs=prv, eps_error=eps_error, delta_error=delta_error, max_self_compositions=steps
        )
        low, est, up = acc.compute_epsilon(delta=delta, num_self_compositions=steps)
    if not all(np.isfinite([low, est, up])) or up < 0:
        raise ArithmeticError(f"PRV returned a non-finite epsilon ({low}, {est}, {up})")
    return max(float(low), 0.0), max(float(est), 0.0), max(float(up), 0.0)


@functools.lru_cache(maxsize=4096)  # pure, and asked again for the same steps (plan, guard)
def compute_epsilon(
    sample_rate: float,
    noise_multiplier: float,
    steps: int,
    delta: float,
    accountant: str = "prv",
) -> EpsilonResult:
    """Epsilon after ``steps`` Poisson-subsampled Gaussian steps; never raises for valid input."""
    if accountant not in ACCOUNTANTS:
        raise AccountingError(f"unknown accountant {accountant!r}; choose one of {ACCOUNTANTS}")
    check_mechanism(sample_rate, noise_multiplier, steps, delta)
    if steps == 0:
        return EpsilonResult(0.0, 0.0, 0.0, 0.0, accountant, accountant, "no steps taken")
    if noise_multiplier == 0:
        inf = float("inf")
        return EpsilonResult(inf, inf, inf, inf, accountant, accountant, "no noise")
    eps_rdp = rdp_epsilon(sample_rate, noise_multiplier, steps, delta)
    if accountant == "rdp":
        return EpsilonResult(eps_rdp, None, None, eps_rdp, "rdp", "rdp")
    try:
        low, est, up = _prv_epsilon(sample_rate, noise_multiplier, steps, delta, eps_rdp)
    except (ArithmeticError, ValueError, MemoryError, RuntimeError) as err:
        note = f"PRV failed ({err}); fell back to RDP, an upper bound"
        return EpsilonResult(eps_rdp, None, None, eps_rdp, "rdp", "prv", note)
    # Both are upper bounds on the true epsilon; report the tighter one.
    if eps_rdp < up:
        note = "RDP bound was tighter than the PRV upper bound"
        return EpsilonResult(eps_rdp, low, est, up, "rdp", "prv", note)
    return EpsilonResult(up, low, est, up, "prv", "prv")


def steps_within_budget(
    target_epsilon: float,
    sample_rate: float,
    noise_multiplier: float,
    max_steps: int,
    delta: float,
    accountant: str = "prv",
) -> int:
    """The most steps, up to ``max_steps``, whose reported epsilon stays at most the target
    (epsilon grows with the steps, so a bisection finds it)."""

    def within(steps: int) -> bool:
        eps = compute_epsilon(sample_rate, noise_multiplier, steps, delta, accountant).epsilon
        return eps <= target_epsilon

    if within(max_steps):
        return max_steps
    low, high = 0, max_steps  # within(low), not within(high)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if within(mid) else (low, mid)
    return low


def calibrate_noise(
    target_epsilon: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "prv",
    rtol: float = 0.01,
) -> float:
    """Smallest noise multiplier (to ``rtol``) whose epsilon is at most ``target_epsilon``.

    The returned sigma gives epsilon in [target * (1 - rtol), target].
    """
    if not (target_epsilon > 0) or math.isinf(target_epsilon):
        raise AccountingError(
            f"target epsilon must be a positive finite number, got {target_epsilon}; "
            "for training without privacy use privacy=none"
        )
    check_mechanism(sample_rate, 1.0, steps, delta)
    if steps == 0:
        raise AccountingError("cannot calibrate noise for 0 steps; raise trainer.max_epochs")

    def eps(sigma: float) -> float:
        return compute_epsilon(sample_rate, sigma, steps, delta, accountant).epsilon

    if eps(MAX_SIGMA) > target_epsilon:
        raise AccountingError(
            f"no noise multiplier up to {MAX_SIGMA:g} reaches epsilon {target_epsilon} with "
            f"sample rate {sample_rate:.4g}, {steps} steps and delta {delta:g}; raise "
            "privacy.target_epsilon, or lower trainer.max_epochs or sampler.expected_batch_size"
        )
    if eps(MIN_SIGMA) <= target_epsilon:
        raise AccountingError(
            f"epsilon {target_epsilon} is reached with noise below {MIN_SIGMA}, where the "
            "accountants are unreliable; set privacy.noise_multiplier explicitly instead"
        )
    # Bracket cheaply with RDP (an upper bound, so its sigma is enough for PRV as well), then
    # solve log eps(log sigma) = log target by regula falsi (Illinois): a few PRV evaluations.
    lo, hi = MIN_SIGMA, MAX_SIGMA
    sigma_rdp = _bisect(lambda s: rdp_epsilon(sample_rate, s, steps, delta), target_epsilon, lo, hi)
    aim = math.log(target_epsilon * (1 - rtol / 2))
    e_hi = eps(sigma_rdp)
    if e_hi <= target_epsilon:
        hi = sigma_rdp
        lo = sigma_rdp / 2
        while eps(lo) <= target_epsilon and lo > MIN_SIGMA:
            hi, lo = lo, max(lo / 2, MIN_SIGMA)
    else:
        lo = sigma_rdp
    x_lo, x_hi = math.log(lo), math.log(hi)
    f_lo, f_hi = math.log(eps(lo)) - aim, math.log(eps(hi)) - aim
    side = 0
    for _ in range(60):
        if f_hi + aim >= math.log(target_epsilon * (1 - rtol)):
            break
        x = x_hi - f_hi * (x_hi - x_lo) / (f_hi - f_lo)
        if not (min(x_lo, x_hi) < x < max(x_lo, x_hi)):
            x = (x_lo + x_hi) / 2
        e = eps(math.exp(x))
        f = math.log(e) - aim if e > 0 else -math.inf
        if e <= target_epsilon:
            x_hi, f_hi = x, f
            if side == 1:
                f_lo /= 2
            side = 1
        else:
            x_lo, f_lo = x, f
            if side == -1:
                f_hi /= 2
            side = -1
    return math.exp(x_hi)


def _bisect(fn, target: float, lo: float, hi: float, iters: int = 24) -> float:
    """Smallest x in [lo, hi] (to ~1e-6 relative) with fn(x) <= target; fn decreasing."""
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        if fn(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi
