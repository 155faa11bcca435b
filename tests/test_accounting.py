"""Epsilon against Google's dp-accounting PLD accountant; calibration; the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant

from dpresearch.privacy.accounting import (
    AccountingError,
    calibrate_noise,
    compute_epsilon,
    rdp_epsilon,
)


def pld_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    event = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma))
    acc.compose(dp_event.SelfComposedDpEvent(event, steps))
    return acc.get_epsilon(delta)


CASES = [  # (q, sigma, steps, delta): small to large budgets
    (0.01, 1.0, 1000, 1e-5),
    (256 / 60000, 1.1, 2000, 1e-5),
    (0.05, 2.0, 500, 1e-6),
    (0.2, 0.8, 100, 1e-5),
    (0.001, 0.6, 3000, 1e-5),
    (1.0, 5.0, 10, 1e-5),
]


@pytest.mark.parametrize("q,sigma,steps,delta", CASES)
def test_prv_epsilon_matches_dp_accounting_pld(q, sigma, steps, delta) -> None:
    ours = compute_epsilon(q, sigma, steps, delta, "prv")
    reference = pld_epsilon(q, sigma, steps, delta)
    assert ours.epsilon_lower is not None
    # The PRV interval must contain the reference (PLD's own discretization adds ~1e-3).
    slack = 2e-3 * max(1.0, reference)
    assert ours.epsilon_lower - slack <= reference <= ours.epsilon_upper + slack
    assert ours.epsilon >= reference - slack  # what we report is never optimistic


@pytest.mark.parametrize("q,sigma,steps,delta", CASES[:3])
def test_rdp_is_an_upper_bound_on_pld(q, sigma, steps, delta) -> None:
    rdp = compute_epsilon(q, sigma, steps, delta, "rdp").epsilon
    assert rdp >= pld_epsilon(q, sigma, steps, delta) - 1e-3
    assert rdp == pytest.approx(rdp_epsilon(q, sigma, steps, delta))


@pytest.mark.parametrize(
    "target,q,steps", [(0.1, 0.01, 1000), (1.0, 0.02, 500), (3.0, 0.2, 150), (8.0, 0.08, 1200)]
)
def test_calibrated_noise_gives_epsilon_within_one_percent_below_target(target, q, steps):
    sigma = calibrate_noise(target, q, steps, 1e-5)
    eps = compute_epsilon(q, sigma, steps, 1e-5).epsilon
    assert target * 0.99 <= eps <= target


@pytest.mark.parametrize("q,sigma,steps", [(0.1, 0.3, 10000), (0.05, 0.2, 1000), (0.5, 0.5, 5000)])
def test_large_budgets_never_crash_and_stay_upper_bounds(q, sigma, steps) -> None:
    result = compute_epsilon(q, sigma, steps, 1e-5)
    assert math.isfinite(result.epsilon) and result.epsilon > 50
    assert result.epsilon <= rdp_epsilon(q, sigma, steps, 1e-5) + 1e-9


def test_calibration_for_a_large_budget() -> None:
    sigma = calibrate_noise(100.0, 0.01, 1000, 1e-5)
    assert 99.0 <= compute_epsilon(0.01, sigma, 1000, 1e-5).epsilon <= 100.0


def test_unreachable_target_is_a_clear_error() -> None:
    with pytest.raises(AccountingError, match="no noise multiplier"):
        calibrate_noise(1e-4, 0.5, 10000, 1e-5)


def test_edge_cases() -> None:
    assert compute_epsilon(0.1, 1.0, 0, 1e-5).epsilon == 0.0
    assert compute_epsilon(0.1, 0.0, 10, 1e-5).epsilon == math.inf
    with pytest.raises(AccountingError):
        compute_epsilon(1.5, 1.0, 10, 1e-5)


def _cli(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "dpresearch.privacy", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cli_epsilon_and_noise_round_trip() -> None:
    base = ["--sample-rate", "0.01", "--steps", "1000", "--delta", "1e-5"]
    eps = _cli("epsilon", "--noise-multiplier", "1.0", *base)
    assert eps["epsilon_lower"] <= eps["epsilon"] <= eps["epsilon_upper"] + 1e-12
    assert eps["epsilon"] == pytest.approx(pld_epsilon(0.01, 1.0, 1000, 1e-5), abs=0.03)
    noise = _cli("noise", "--target-epsilon", "2.0", *base)
    assert 1.98 <= noise["epsilon"] <= 2.0
    rdp = _cli("epsilon", "--noise-multiplier", "1.0", "--accountant", "rdp", *base)
    assert rdp["accountant"] == "rdp" and rdp["epsilon"] > eps["epsilon"]


# --- regimes where a numerical accountant's grid can mislead (issue 13) -------------------


def gaussian_delta(mu: float, eps: float) -> float:
    """delta(eps) of a Gaussian with sensitivity/std ratio mu (Balle and Wang 2018)."""
    from scipy.stats import norm

    return norm.cdf(mu / 2 - eps / mu) - math.exp(eps) * norm.cdf(-mu / 2 - eps / mu)


@pytest.mark.parametrize("delta,truth", [(1e-3, 172.9), (1e-5, 191.5)])
def test_full_batch_is_the_exact_gaussian_composition(delta, truth) -> None:
    # PRV alone reported 167.6 and 186.3 here: below the truth.
    result = compute_epsilon(1.0, 20.0, 100_000, delta)
    assert result.epsilon >= truth
    mu = math.sqrt(100_000) / 20.0
    assert gaussian_delta(mu, result.epsilon) <= delta  # the reported epsilon achieves delta
    assert gaussian_delta(mu, result.epsilon * (1 - 1e-6)) > delta  # and is not loose


def test_exact_gaussian_agrees_with_dp_accounting() -> None:
    ours = compute_epsilon(1.0, 5.0, 10, 1e-5).epsilon
    assert ours == pytest.approx(pld_epsilon(1.0, 5.0, 10, 1e-5), rel=1e-3)
    assert ours <= pld_epsilon(1.0, 5.0, 10, 1e-5) + 1e-9  # PLD is pessimistic, ours exact


def test_many_steps_never_below_the_pld_upper_bound() -> None:
    # PRV's upper end was 46.822 here, below PLD's 46.836.
    ours = compute_epsilon(0.1, 5.0, 100_000, 1e-5).epsilon
    assert ours >= pld_epsilon(0.1, 5.0, 100_000, 1e-5)


def test_where_prv_fails_the_pld_answers_not_a_loose_rdp() -> None:
    result = compute_epsilon(0.5, 2.0, 10_000, 1e-5)
    reference = pld_epsilon(0.5, 2.0, 10_000, 1e-5)
    assert reference <= result.epsilon <= reference * 1.01
    assert result.epsilon < rdp_epsilon(0.5, 2.0, 10_000, 1e-5)


@pytest.mark.parametrize("steps", [1, 10, 100, 1000])
def test_epsilon_is_never_negative(steps) -> None:
    for accountant in ("prv", "rdp"):
        assert compute_epsilon(0.01, 20.0, steps, 1e-3, accountant).epsilon >= 0.0


@pytest.mark.parametrize(
    "sigma,steps",
    [(math.inf, 10), (math.nan, 10), (1.0, math.nan), (1.0, math.inf), (1.0, 10.5), (1.0, "10"),
     (1.0, 10**7)],
)  # fmt: skip
def test_non_finite_or_non_integral_inputs_are_refused(sigma, steps) -> None:
    with pytest.raises(AccountingError):
        compute_epsilon(0.01, sigma, steps, 1e-5)


def test_huge_noise_is_a_small_upper_bound_not_an_overflow() -> None:
    huge = compute_epsilon(0.01, 1e300, 100, 1e-5)
    assert 0.0 <= huge.epsilon <= compute_epsilon(0.01, 100.0, 100, 1e-5).epsilon
    assert compute_epsilon(0.01, 1.0, 10.0, 1e-5).epsilon > 0  # an integral float is steps


def test_cli_refuses_infinite_noise_quickly() -> None:
    base = ["--sample-rate", "0.01", "--steps", "100", "--delta", "1e-5"]
    out = _cli("epsilon", "--noise-multiplier", "inf", *base)
    assert "finite" in out["error"]
