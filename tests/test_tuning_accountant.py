"""The private-tuning accountant (Papernot and Steinke 2022) against closed forms, Google's
dp-accounting, and brute force: the exact Renyi divergence of best-of-K on small discrete
mechanisms. And the distribution of K against its formulas."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from dpresearch.privacy.__main__ import main as privacy_cli
from dpresearch.privacy.accounting import AccountingError
from dpresearch.privacy.tuning import (
    ORDERS,
    SecureRandom,
    TrialCount,
    calibrate_trial_noise,
    pure_dp_rdp,
    rdp_to_epsilon,
    sgm_rdp,
    total_epsilon_of,
    tuning_account,
    tuning_rdp,
)

TNB = "truncated_negative_binomial"
COUNTS = [
    TrialCount(TNB, eta=1.0, gamma=0.1),  # geometric, mean 10
    TrialCount(TNB, eta=0.0, gamma=0.05),  # logarithmic
    TrialCount(TNB, eta=0.5, gamma=0.2),
    TrialCount(TNB, eta=-0.5, gamma=0.02),  # the paper allows eta in (-1, 0)
    TrialCount("poisson", mean_trials=10.0),
]


@pytest.mark.parametrize("count", COUNTS, ids=lambda c: f"{c.distribution}-{c.eta}")
def test_k_pmf_mean_and_variance_match_the_formulas(count):
    ks = np.arange(0, 20000)
    pmf = np.array([count.pmf(int(k)) for k in ks])
    assert pmf.sum() == pytest.approx(1.0, abs=1e-9)
    mean = float((ks * pmf).sum())
    assert mean == pytest.approx(count.mean, rel=1e-9)
    assert float((ks**2 * pmf).sum()) - mean**2 == pytest.approx(count.variance, rel=1e-7)
    if count.distribution != "poisson":
        assert count.pmf(0) == 0.0  # truncated: at least one trial


def test_k_closed_forms_of_the_named_cases():
    geometric = TrialCount(TNB, eta=1.0, gamma=0.25)
    assert geometric.mean == pytest.approx(4.0) and geometric.variance == pytest.approx(12.0)
    assert geometric.pmf(3) == pytest.approx(0.75**2 * 0.25)
    log = TrialCount(TNB, eta=0.0, gamma=0.5)
    assert log.pmf(2) == pytest.approx(0.25 / (2 * math.log(2)))
    assert TrialCount.from_config(TNB, eta=2.0, mean_trials=7.0).mean == pytest.approx(7.0)


@pytest.mark.parametrize("count", COUNTS, ids=lambda c: f"{c.distribution}-{c.eta}")
def test_drawn_k_follows_its_distribution(count):
    rng = random.Random(1234)
    draws = np.array([count.draw(rng) for _ in range(20000)])
    se = math.sqrt(count.variance / len(draws))
    assert abs(draws.mean() - count.mean) < 5 * se
    assert draws.min() >= (0 if count.distribution == "poisson" else 1)
    # Chi-square over the first cells and the tail.
    edges = [k for k in range(0 if count.distribution == "poisson" else 1, 40)
             if count.pmf(k) * len(draws) >= 20]  # fmt: skip
    expected = [count.pmf(k) * len(draws) for k in edges]
    observed = [(draws == k).sum() for k in edges]
    chi2 = sum((o - e) ** 2 / e for o, e in zip(observed, expected))
    assert chi2 < len(edges) + 6 * math.sqrt(2 * len(edges))


def test_secure_draws_are_uniform_and_unseeded():
    rng = SecureRandom(0)  # a seed is ignored: nothing can replay the draw
    u = np.array([rng.random() for _ in range(20000)])
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert len({SecureRandom(0).random() for _ in range(5)}) == 5


def test_bad_distribution_parameters_are_refused_by_name():
    with pytest.raises(AccountingError, match="eta"):
        TrialCount(TNB, eta=-1.0, gamma=0.1)
    with pytest.raises(AccountingError, match="gamma"):
        TrialCount(TNB, eta=1.0, gamma=1.0)
    with pytest.raises(AccountingError, match="exactly one of gamma and mean_trials"):
        TrialCount.from_config(TNB, eta=1.0, gamma=0.1, mean_trials=10)
    with pytest.raises(AccountingError, match="distribution"):
        TrialCount("binomial")


# ---------------------------------------------------------------- the theorem's closed forms


@pytest.mark.parametrize("eta,gamma,rho", [(1.0, 0.1, 0.02), (0.0, 0.03, 0.05), (2.0, 0.2, 0.01)])
def test_gaussian_trials_match_the_zcdp_closed_form(eta, gamma, rho):
    """A rho-zCDP trial (RDP rho*l) under TNB: the min over lh of (lh-1) rho + log(1/gamma)/lh
    is 2 sqrt(rho log(1/gamma)) - rho, so eps'(l) = rho l + (1+eta)(2 sqrt(rho L) - rho) +
    log E[K]/(l-1); the dense grid of orders comes within 1% of it, never below."""
    count = TrialCount(TNB, eta=eta, gamma=gamma)
    orders = np.array(ORDERS)
    bound = tuning_rdp(orders, rho * orders, count)
    L = math.log(1 / gamma)
    assert math.sqrt(L / rho) >= 1  # the optimum lies in lh >= 1
    closed = (
        rho * orders
        + (1 + eta) * (2 * math.sqrt(rho * L) - rho)
        + math.log(count.mean) / (orders - 1)
    )
    rising = orders > 1 + math.sqrt(math.log(count.mean) / rho)  # monotonicity is not used here
    assert np.all(bound[rising] >= closed[rising] - 1e-12)
    assert np.all(bound[rising] <= closed[rising] * 1.01)


def test_pure_dp_trials_under_a_geometric_k_cost_three_epsilon():
    """epsilon-DP trials and geometric K: the bound tends to 3 epsilon (Liu and Talwar 2019,
    recovered in the paper) as the order grows."""
    count = TrialCount(TNB, eta=1.0, gamma=0.01)
    for eps in (0.5, 1.0, 2.0):
        total, _ = total_epsilon_of(pure_dp_rdp(ORDERS, eps), count, 1e-6)
        assert 2.9 * eps < total <= 3 * eps + 0.05


# ---------------------------------------------------- an independent implementation: dp-accounting


@pytest.mark.parametrize("count", [c for c in COUNTS if c.eta is None or c.eta >= 0],
                         ids=lambda c: f"{c.distribution}-{c.eta}")  # fmt: skip
def test_curve_matches_dp_accounting(count):
    from dp_accounting.rdp import rdp_privacy_accountant as ref

    rdp = sgm_rdp(ORDERS, 0.05, 1.0, 200)
    ours = tuning_rdp(ORDERS, rdp, count)
    shape = math.inf if count.distribution == "poisson" else count.eta
    theirs = np.asarray(ref._compute_rdp_repeat_and_select(list(ORDERS), rdp, count.mean, shape))
    # dp-accounting skips the monotonicity step for Poisson: ours is never above theirs, and
    # equal where theirs is already monotone.
    assert np.all(ours <= theirs + 1e-9)
    mono = np.minimum.accumulate(theirs[::-1])[::-1]
    np.testing.assert_allclose(ours, mono, rtol=1e-9)
    eps_theirs, _ = ref.compute_epsilon(list(ORDERS), mono, 1e-5)
    assert rdp_to_epsilon(ORDERS, ours, 1e-5) == pytest.approx(eps_theirs, rel=1e-9)


# ----------------------------------------------------------------- brute force on small mechanisms


def _renyi(p: np.ndarray, q: np.ndarray, a: float) -> float:
    keep = (p > 0) | (q > 0)  # outcomes impossible under both
    p, q = p[keep], q[keep]
    return math.log(float(np.sum(p**a * q ** (1 - a)))) / (a - 1)


def _best_of(pmf: np.ndarray, count: TrialCount, kmax: int = 3000) -> np.ndarray:
    """The exact output distribution of 'run K times, release the largest output' by summing
    over k (K = 0, Poisson only, releases a separate 'nothing' outcome)."""
    cdf = np.cumsum(pmf)
    below = np.concatenate([[0.0], cdf[:-1]])
    out, nothing = np.zeros_like(pmf), 0.0
    for k in range(kmax):
        w = count.pmf(k)
        if k == 0:
            nothing += w
        elif w > 0:
            out += w * (cdf**k - below**k)
    return np.concatenate([[nothing], out])


MECHANISMS = {
    "three_outputs": (np.array([0.5, 0.3, 0.2]), np.array([0.6, 0.3, 0.1])),
    "rare_best": (np.array([0.9, 0.1 - 1e-3, 1e-3]), np.array([0.9, 0.1 - 1e-4, 1e-4])),
}


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("count", COUNTS, ids=lambda c: f"{c.distribution}-{c.eta}")
def test_bound_holds_against_the_exact_divergence_of_best_of_k(mechanism, count):
    p, p_other = MECHANISMS[mechanism]
    orders = [1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32]
    trial = np.array([max(_renyi(p, p_other, a), _renyi(p_other, p, a)) for a in orders])
    a_d, a_other = _best_of(p, count), _best_of(p_other, count)
    assert a_d.sum() == pytest.approx(1.0, abs=1e-9)
    exact = np.array([max(_renyi(a_d, a_other, a), _renyi(a_other, a_d, a)) for a in orders])
    bound = tuning_rdp(orders, trial, count)
    assert np.all(exact <= bound), (exact, bound)
    if mechanism == "rare_best":  # selection costs privacy: one trial's curve is not enough,
        assert np.any(exact > trial * 3)  # so an accountant that ignored tuning would fail


# --------------------------------------------------------------------------- calibration, CLI


def test_calibrated_noise_meets_the_total_budget_and_no_less_noise_would():
    count = TrialCount.from_config(TNB, eta=1.0, mean_trials=10)
    sigma = calibrate_trial_noise(4.0, 0.05, 120, 1e-5, count, 5.0)
    total = tuning_account(0.05, sigma, 120, 1e-5, count, 5.0)
    assert total.total_epsilon <= 4.0
    assert tuning_account(0.05, sigma * 0.99, 120, 1e-5, count, 5.0).total_epsilon > 4.0
    assert total.trial_epsilon < total.total_epsilon
    assert total.training_epsilon_rdp < total.trial_epsilon  # the score costs something


def test_impossible_total_is_refused_with_what_to_change():
    count = TrialCount.from_config(TNB, eta=1.0, mean_trials=10)
    with pytest.raises(AccountingError, match="raise privacy.target_epsilon above"):
        calibrate_trial_noise(0.3, 0.05, 120, 1e-5, count, 0.5)


def test_cli_tuning_verb(capsys):
    args = ["tuning", "--eta", "1", "--mean-trials", "10", "--delta", "1e-5"]
    assert privacy_cli([*args, "--trial-epsilon", "1"]) == 0
    pure = json.loads(capsys.readouterr().out)
    assert 2.9 < pure["total_epsilon"] < 3.05
    assert privacy_cli([*args, "--sample-rate", "0.05", "--steps", "120",
                        "--noise-multiplier", "1.5", "--score-noise", "5"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    count = TrialCount.from_config(TNB, eta=1, mean_trials=10)
    assert out["total_epsilon"] == tuning_account(0.05, 1.5, 120, 1e-5, count, 5.0).total_epsilon
    assert out["count"]["mean_trials"] == pytest.approx(10)
    with pytest.raises(SystemExit):
        privacy_cli([*args, "--sample-rate", "0.05"])
