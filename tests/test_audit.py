"""The one-run privacy audit: its statistics against randomized response, and end to end on
a correct run and on deliberately broken ones."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from dpresearch.audit import run_audit
from dpresearch.privacy.audit_bounds import (
    audit,
    epsilon_lower_bound,
    fdp_epsilon_lower_bound,
    gdp_epsilon,
    p_value,
)

CONF = Path(__file__).resolve().parents[1] / "conf"
FAST = ["logger=csv", "trainer.enable_progress_bar=false", "trainer.max_epochs=5",
        "privacy.target_epsilon=1"]  # fmt: skip


STEINKE = {"steinke": ("steinke", "score")}
REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "audit_reference.json").read_text())


def audit_cfg(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("audit", overrides=overrides)


def test_perfect_guesses_give_the_binomial_bound() -> None:
    # delta 0: all r guesses right has probability q^r; the bound solves q^r = significance.
    r, sig = 100, 0.05
    q = sig ** (1 / r)
    assert epsilon_lower_bound(1000, r, r, 0.0, sig) == pytest.approx(math.log(q / (1 - q)), 1e-6)
    assert epsilon_lower_bound(1000, r, r // 2, 1e-5, sig) == 0.0  # chance level: nothing
    # delta only loosens the test, and the p-value falls as epsilon grows.
    assert epsilon_lower_bound(1000, r, r, 1e-5, sig) <= epsilon_lower_bound(1000, r, r, 0.0, sig)
    ps = [p_value(1000, 100, 90, e, 1e-5) for e in (0.5, 1, 2, 4)]
    assert ps == sorted(ps)


def test_lower_bound_is_valid_for_randomized_response() -> None:
    """Canaries under epsilon-DP randomized response (score = the noisy membership bit): the
    audit's 95% lower bound exceeds the true epsilon in at most ~5% of repetitions."""
    eps, m, trials = 1.0, 1000, 200
    rng = np.random.default_rng(0)
    keep = 1 / (1 + math.exp(-eps))
    exceed = 0
    for _ in range(trials):
        included = rng.random(m) < 0.5
        reported = np.where(rng.random(m) < keep, included, ~included)
        scores = reported + 1e-3 * rng.random(m)  # ties broken at random
        exceed += audit(scores, included, 0.0, methods=STEINKE).epsilon_lower_bound > eps
    assert exceed <= 0.05 * trials + 2 * math.sqrt(0.05 * 0.95 * trials)
    # ...and not vacuous: at epsilon 4 (98% of answers true) it proves more than 1.
    included = rng.random(m) < 0.5
    keep = 1 / (1 + math.exp(-4.0))
    reported = np.where(rng.random(m) < keep, included, ~included)
    strong = audit(reported + 1e-3 * rng.random(m), included, 0.0, methods=STEINKE)
    strong = strong.epsilon_lower_bound
    assert 1.0 < strong <= 4.0


@pytest.mark.parametrize(
    "case", REFERENCE["cases"], ids=lambda c: f"{c['m']}-{c['guesses']}-{c['correct']}"
)
def test_bounds_match_jax_privacy(case) -> None:
    """Both tests against jax-privacy 2.0.0's implementations (tests/fixtures/
    make_audit_reference.py), one-sided guesses."""
    args = case["m"], case["guesses"], case["correct"], case["delta"], case["significance"]
    assert epsilon_lower_bound(*args) == pytest.approx(case["steinke"], abs=1e-4)
    if case["fdp"] is not None:
        assert fdp_epsilon_lower_bound(*args) == pytest.approx(case["fdp"], abs=1e-4)


def test_fdp_bound_is_valid_and_tighter_for_a_gaussian_mechanism() -> None:
    """Canaries whose scores are N(mu, 1) when included and N(0, 1) when not: exactly mu-GDP.
    The f-DP bound exceeds the true epsilon in at most ~5% of repetitions, and proves more
    than the Steinke bound on the same scores."""
    mu, m, delta, trials = 1.5, 4000, 1e-5, 60
    true_eps = gdp_epsilon(mu, delta)
    rng = np.random.default_rng(1)
    exceed, fdp, steinke = 0, [], []
    for _ in range(trials):
        included = rng.random(m) < 0.5
        result = audit(rng.normal(size=m) + mu * included, included, delta)
        exceed += result.epsilon_lower_bound > true_eps
        fdp.append(result.bounds["fdp"].epsilon_lower_bound)
        steinke.append(result.bounds["steinke"].epsilon_lower_bound)
    assert exceed <= 0.05 * trials + 2 * math.sqrt(0.05 * 0.95 * trials)
    assert np.mean(fdp) > 1.1 * np.mean(steinke) and np.mean(fdp) > 0.4 * true_eps
    with pytest.raises(ValueError, match="delta"):
        gdp_epsilon(1.0, 0.0)


@pytest.mark.parametrize("epsilon", [2.0, 4.0, 8.0])
def test_dp_sgd_curve_lies_above_the_gaussian_curve_the_fdp_bound_tests(epsilon) -> None:
    """The f-DP bound tests mu-GDP with mu matching the claimed (epsilon, delta). That is a
    sound test of a DP-SGD run only if the run's own trade-off curve (Poisson-subsampled
    Gaussian, composed) lies above G_mu; checked here from dp-accounting's privacy loss
    distribution at the digits audit's q and steps (tolerance: the PLD's discretization)."""
    from dp_accounting.pld import privacy_loss_distribution as pld
    from scipy import optimize, stats

    q, steps, delta = 0.198, 150, 1e-5

    def composed(sigma):
        return pld.from_gaussian_mechanism(
            sigma, sampling_prob=q, value_discretization_interval=1e-3
        ).self_compose(steps)

    sigma = optimize.brentq(lambda s: composed(s).get_epsilon_for_delta(delta) - epsilon,
                            0.5, 20, xtol=1e-4)  # fmt: skip
    curve = composed(sigma)
    grid = np.linspace(-2, 4 * epsilon + 10, 3000)
    deltas = np.array(curve.get_delta_for_epsilon(grid))
    alphas = np.logspace(-9, -1e-3, 300)
    # the trade-off curve from the privacy profile: f(a) = sup_eps max(0, 1 - d - e^eps a, ...)
    slack = 1 - deltas[None, :]
    f = np.maximum(np.max(slack - np.exp(grid)[None, :] * alphas[:, None], axis=1),
                   np.max(np.exp(-grid)[None, :] * (slack - alphas[:, None]), axis=1))  # fmt: skip
    mu = optimize.brentq(lambda u: gdp_epsilon(u, delta) - curve.get_epsilon_for_delta(delta),
                         1e-3, 20)  # fmt: skip
    gaussian = stats.norm.cdf(stats.norm.ppf(1 - alphas) - mu)
    assert np.all(np.maximum(f, 0) >= gaussian - 1e-6)


def test_correct_run_is_consistent_and_broken_runs_are_caught(tmp_path) -> None:
    ok = run_audit(audit_cfg(FAST), tmp_path / "ok")
    assert ok["consistent"] and ok["epsilon_lower_bound"] < ok["claimed_epsilon"] <= 1.0
    assert ok["steps"] == 25 and (tmp_path / "ok" / "audit.json").exists()
    written = json.loads((tmp_path / "ok" / "audit.json").read_text())
    methods = ("steinke", "fdp", "all_iterates")
    bounds = [written[f"epsilon_lower_bound_{m}"] for m in methods]
    assert written["epsilon_lower_bound"] == max(bounds) and written["claimed_epsilon"] > 0
    assert written["canaries"] == 50_000  # one per coordinate of the CNN, up to 50,000
    for sabotage in ("noise", "clipping"):
        broken = run_audit(audit_cfg([*FAST, f"audit.sabotage={sabotage}"]), tmp_path / sabotage)
        assert not broken["consistent"], sabotage
        assert broken["epsilon_lower_bound"] > broken["claimed_epsilon"] > 0.9


@pytest.mark.parametrize(
    "noise",
    [["noise=banded_mf", "noise.bands=2"], ["noise=blt", "noise.buffers=2"]],
    ids=["banded_mf", "blt"],
)
def test_correlated_noise_run_is_consistent_and_without_noise_is_caught(noise, tmp_path) -> None:
    """Correlated noise under cyclic sampling: the canaries join as examples of one group."""
    banded = [*FAST, *noise, "sampler.expected_batch_size=64", "trainer.max_epochs=2"]
    ok = run_audit(audit_cfg(banded), tmp_path / "ok")
    assert ok["consistent"] and ok["epsilon_lower_bound"] < ok["claimed_epsilon"] <= 1.0
    broken = run_audit(audit_cfg([*banded, "audit.sabotage=noise"]), tmp_path / "noise")
    assert not broken["consistent"]
    assert broken["epsilon_lower_bound"] > broken["claimed_epsilon"]


def test_audit_refuses_what_it_cannot_audit(tmp_path) -> None:
    with pytest.raises(ValueError, match="privacy=dp"):
        run_audit(audit_cfg(["privacy=none"]), tmp_path)
    with pytest.raises(ValueError, match="sabotage"):
        run_audit(audit_cfg([*FAST, "audit.sabotage=everything"]), tmp_path)
    with pytest.raises(ValueError, match="lower audit.canaries"):
        run_audit(audit_cfg([*FAST, "audit.canaries=10000000"]), tmp_path / "big")


def test_input_canaries_join_the_training_set_and_are_scored(tmp_path) -> None:
    cfg = audit_cfg([*FAST, "audit.kind=input", "audit.canaries=200"])
    record = run_audit(cfg, tmp_path / "input")
    assert record["consistent"] and record["canaries"] == 200
    assert record["kind"].startswith("input")
    summary = json.loads((tmp_path / "input" / "summary.json").read_text())
    # 200 examples left the training set; the included ones came back with wrong labels.
    assert summary["num_train"] == 1294 - 200 + record["included"]
    with pytest.raises(ValueError, match="lower audit.canaries"):
        run_audit(audit_cfg([*FAST, "audit.kind=input", "audit.canaries=900"]), tmp_path / "x")
    with pytest.raises(ValueError, match="audit.kind"):
        run_audit(audit_cfg([*FAST, "audit.kind=membership"]), tmp_path / "y")


def test_user_level_runs_are_audited_per_user(tmp_path) -> None:
    """privacy.unit=user: a gradient canary is one user's clipped contribution, joining at the
    users' rate; an input canary is a user of its own (one example)."""
    users = [*FAST, "privacy.unit=user", "dataset.users=400", "privacy.examples_per_user=4",
             "sampler.expected_batch_size=64"]  # fmt: skip
    ok = run_audit(audit_cfg(users), tmp_path / "ok")
    assert ok["consistent"] and ok["epsilon_lower_bound"] < ok["claimed_epsilon"] <= 1.0
    broken = run_audit(audit_cfg([*users, "audit.sabotage=noise"]), tmp_path / "noise")
    assert not broken["consistent"]
    record = run_audit(audit_cfg([*users, "audit.kind=input", "audit.canaries=200"]),
                       tmp_path / "input")  # fmt: skip
    assert record["consistent"]
    summary = json.loads((tmp_path / "input" / "summary.json").read_text())
    assert summary["privacy_unit"] == "user" and summary["num_users"] > record["included"]
