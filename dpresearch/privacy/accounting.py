"""Epsilon for the Poisson-subsampled Gaussian mechanism, and noise calibration.

Two accountants:
- ``prv`` (default): numerical accounting. The PRV accountant (Gopi et al. 2021, package
  ``prv-accountant``) gives an interval [lower, upper] meant to contain the true epsilon, but
  its error bound fails where its grid is coarse (seen at q=1, sigma=20, 1e5 steps: upper 167.6
  against the exact 172.9). So the reported epsilon is the LARGER of the PRV upper bound and an
  independent one, Google's PLD accountant (``dp-accounting``, connect-the-dots pessimistic
  discretization, a proven upper bound), then the smaller of that and the RDP bound (analytic,
  no grid). At q=1 the mechanism is a plain Gaussian and its composition is computed exactly
  (Balle and Wang 2018): no grid at all.
- ``rdp``: Renyi DP (Mironov 2017) through Opacus' analysis; an upper bound, looser than PRV.

Every epsilon is clamped at 0 (an RDP conversion can go slightly below it: the true epsilon
cannot).

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
MAX_STEPS = 1_000_000  # checked against the references up to here (about 15 s at 1e6)
MAX_ACCOUNTED_SIGMA = 1e4  # beyond it epsilon is bounded by the value at 1e4 (monotone)


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


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def check_mechanism(sample_rate: float, noise_multiplier: float, steps: int, delta: float) -> int:
    """Refuse parameters outside the mechanism's domain, saying which and why; returns the
    steps as an int (an integral float such as 150.0 is accepted)."""
    if not _is_number(sample_rate) or not (0.0 < sample_rate <= 1.0):
        raise AccountingError(f"sample rate must be a number in (0, 1], got {sample_rate!r}")
    if not _is_number(noise_multiplier) or not (0 <= noise_multiplier < math.inf):
        raise AccountingError(
            f"noise multiplier must be a finite number >= 0, got {noise_multiplier!r} (infinite "
            "noise releases nothing: there is nothing to train or account)"
        )
    if not _is_number(steps) or not math.isfinite(steps) or steps < 0 or int(steps) != steps:
        raise AccountingError(f"steps must be a non-negative integer, got {steps!r}")
    if steps > MAX_STEPS:
        raise AccountingError(
            f"{int(steps)} steps is beyond the {MAX_STEPS:,} this accounting is checked for "
            "(the numerical accountants take minutes and more there); use fewer steps"
        )
    if not _is_number(delta) or not (0.0 < delta < 1.0):
        raise AccountingError(f"delta must be a number in (0, 1), got {delta!r}")
    return int(steps)


def rdp_epsilon(sample_rate: float, noise_multiplier: float, steps: int, delta: float) -> float:
    rdp = rdp_analysis.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=RDP_ORDERS
    )
    with warnings.catch_warnings():  # "optimal order is the largest alpha": still a valid bound
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = rdp_analysis.get_privacy_spent(orders=RDP_ORDERS, rdp=rdp, delta=delta)
    return max(float(eps), 0.0)  # the conversion can dip below 0; the true epsilon cannot


def gaussian_epsilon(noise_multiplier: float, steps: int, delta: float) -> float:
    """Exact epsilon of ``steps`` composed Gaussian mechanisms (q=1): a Gaussian with
    mu = sqrt(steps)/sigma, whose delta(eps) = Phi(mu/2 - eps/mu) - e^eps Phi(-mu/2 - eps/mu)
    (Balle and Wang 2018, Theorem 8). Solved by bisection and rounded UP (relative 1e-12)."""
    from scipy.special import log_ndtr

    mu = math.sqrt(steps) / noise_multiplier

    def delta_of(eps: float) -> float:
        return math.exp(log_ndtr(mu / 2 - eps / mu)) - math.exp(eps + log_ndtr(-mu / 2 - eps / mu))

    if delta_of(0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while delta_of(hi) > delta:
        lo, hi = hi, 2 * hi
    while hi - lo > 1e-12 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_of(mid) > delta else (lo, mid)
    return hi


def pld_epsilon(
    sample_rate: float, noise_multiplier: float, steps: int, delta: float, eps_hint: float
) -> float:
    """Google's PLD accountant (pessimistic): an upper bound independent of the PRV's code.
    Its grid: 5e-4 of the budget up to 1e-3 (pessimism about 0.1% of epsilon even at 1e5
    steps, where a coarser grid was seen to add 3%), 1e-2 beyond epsilon 500 (time)."""
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant

    interval = 1e-2 if eps_hint > 500 else min(max(5e-4 * eps_hint, 1e-5), 1e-3)
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=interval)
    event = dp_event.GaussianDpEvent(noise_multiplier)
    if sample_rate < 1.0:
        event = dp_event.PoissonSampledDpEvent(sample_rate, event)
    acc.compose(dp_event.SelfComposedDpEvent(event, steps))
    eps = float(acc.get_epsilon(delta))
    if not math.isfinite(eps):
        raise ArithmeticError(f"PLD returned epsilon {eps}")
    return max(eps, 0.0)


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
    """Epsilon after ``steps`` Poisson-subsampled Gaussian steps; never raises for valid input
    and never reports less than the true epsilon (see the module's docstring)."""
    if accountant not in ACCOUNTANTS:
        raise AccountingError(f"unknown accountant {accountant!r}; choose one of {ACCOUNTANTS}")
    steps = check_mechanism(sample_rate, noise_multiplier, steps, delta)
    if steps == 0:
        return EpsilonResult(0.0, 0.0, 0.0, 0.0, accountant, accountant, "no steps taken")
    if noise_multiplier == 0:
        inf = float("inf")
        return EpsilonResult(inf, inf, inf, inf, accountant, accountant, "no noise")
    if noise_multiplier > MAX_ACCOUNTED_SIGMA:
        # More noise never costs more privacy: the epsilon at the cap bounds this one, where
        # the analyses' arithmetic would overflow.
        result = compute_epsilon(sample_rate, MAX_ACCOUNTED_SIGMA, steps, delta, accountant)
        note = f"sigma {noise_multiplier:g} accounted as {MAX_ACCOUNTED_SIGMA:g} (an upper bound)"
        return EpsilonResult(**{**result.to_dict(), "note": note})
    eps_rdp = rdp_epsilon(sample_rate, noise_multiplier, steps, delta)
    if accountant == "rdp":
        return EpsilonResult(eps_rdp, None, None, eps_rdp, "rdp", "rdp")
    if sample_rate >= 1.0:
        exact = gaussian_epsilon(noise_multiplier, steps, delta)
        note = "q=1: exact composition of Gaussian mechanisms"
        return EpsilonResult(exact, exact, exact, exact, "exact", accountant, note)
    notes = []
    try:
        low, est, up = _prv_epsilon(sample_rate, noise_multiplier, steps, delta, eps_rdp)
    except (ArithmeticError, ValueError, MemoryError, RuntimeError) as err:
        low = est = up = None
        notes.append(f"PRV failed ({err})")
    try:
        pld = pld_epsilon(sample_rate, noise_multiplier, steps, delta, eps_rdp)
    except (ArithmeticError, ValueError, MemoryError, RuntimeError) as err:
        pld = None
        notes.append(f"PLD failed ({err})")
    numerical = [x for x in (up, pld) if x is not None]
    if not numerical:
        notes.append("fell back to RDP, an upper bound")
        return EpsilonResult(eps_rdp, None, None, eps_rdp, "rdp", accountant, "; ".join(notes))
    bound, used = max(numerical), ("prv" if up is not None and up >= (pld or 0.0) else "pld")
    if eps_rdp < bound:
        notes.append(f"RDP bound was tighter than the numerical bound {bound:.6g}")
        bound, used = eps_rdp, "rdp"
    elif used == "pld" and up is not None:
        notes.append(f"PLD upper bound {pld:.6g} above the PRV's {up:.6g}: reported PLD's")
    return EpsilonResult(bound, low, est, up, used, accountant, "; ".join(notes) or None)


def last_step_within(epsilon_at, target_epsilon: float, max_steps: int) -> int:
    """The most steps, up to ``max_steps``, whose epsilon (``epsilon_at(steps)``, which grows
    with the steps) stays at most the target: a bisection."""
    if epsilon_at(max_steps) <= target_epsilon:
        return max_steps
    low, high = 0, max_steps  # within at low, not at high
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if epsilon_at(mid) <= target_epsilon else (low, mid)
    return low


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

    return last_step_within(
        lambda steps: compute_epsilon(sample_rate, noise_multiplier, steps, delta,
                                      accountant).epsilon,
        target_epsilon, max_steps,
    )  # fmt: skip


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
    steps = check_mechanism(sample_rate, 1.0, steps, delta)
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
