"""Empirical lower bounds on epsilon from one training run's canary scores.

m canaries are each included independently with probability 1/2. After training each has a
score (higher: looks included). The auditor guesses on some canaries and counts the correct
guesses; if the run is DP with respect to each canary, that count cannot be too high. Two
tests turn the count into a bound:

- ``steinke`` (Steinke, Nasr, Jagielski 2023, "Privacy Auditing with One (1) Training Run"):
  guesses "in" for the k/2 highest and "out" for the k/2 lowest scores. Under (eps, delta)-DP
  the number correct is dominated by Binomial(k, e^eps / (1 + e^eps)) plus a delta term
  (their Theorem 3). The bound is a true (eps, delta) lower bound, but it only sees eps
  through the best accuracy a guess can have, so it needs very many canaries to be tight.
- ``fdp`` (Mahloujifar, Melis, Chaudhuri 2024, "Auditing f-Differential Privacy in One Run",
  arXiv 2410.22235): guesses "in" for the k highest scores and tests a claimed trade-off
  curve f instead (their recursive bound on the probability of v correct guesses out of k).
  The family here is Gaussian DP, f = G_mu; the bound is the largest mu the test rejects,
  reported as the epsilon of mu-GDP at the run's delta. A run that claims (eps, delta) is
  thereby tested on the Gaussian curve through (eps, delta): sound when the run's own
  trade-off curve lies above it, which holds for Poisson-subsampled Gaussian DP-SGD at the
  settings this project audits (checked against dp-accounting's PLD in tests/test_audit.py),
  and much tighter, since the whole curve constrains the guesses.

Every test is made at (1 - confidence) / (number of tests) (a union bound over guess counts
and methods), so all bounds hold at once with the stated confidence, and the largest of them
(``epsilon_lower_bound``) does too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import optimize, stats
from scipy.special import ndtr, ndtri

METHODS = ("steinke", "fdp")
MAX_EPSILON = 100.0  # a bound is capped here (perfect guesses on enough canaries)


# --- Steinke, Nasr, Jagielski 2023 --------------------------------------------------------
def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[at least v of r guesses correct] under (epsilon, delta)-DP, m canaries."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    q = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of epsilon-DP randomized response
    beta = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if v == 0 or delta == 0:
        return min(beta, 1.0)
    # alpha = max over i = 1..v of P[v - i <= Binomial(r, q) < v] / i
    i = np.arange(1, v + 1)
    alpha = float(np.max(np.cumsum(stats.binom.pmf(v - i, r, q)) / i))
    return min(beta + 2 * m * delta * alpha, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, significance: float) -> float:
    """The largest epsilon whose p-value for v correct out of r is below ``significance``
    (0 when even epsilon 0 cannot be rejected)."""
    return _largest_rejected(lambda eps: p_value(m, r, v, eps, delta) < significance, MAX_EPSILON)


# --- Mahloujifar, Melis, Chaudhuri 2024 ---------------------------------------------------
def gaussian_tradeoff(mu: float) -> Callable[[float], float]:
    """G_mu(a) = Phi(Phi^-1(1 - a) - mu): the least type-II error at type-I error a when
    telling N(0, 1) from N(mu, 1)."""
    return lambda a: float(ndtr(ndtri(1.0 - a) - mu))


def fdp_rejects(
    tradeoff: Callable[[float], float], m: int, guesses: int, correct: int, significance: float
) -> bool:
    """Whether ``correct`` right out of ``guesses`` "in" guesses among m canaries rejects the
    claim that the run is f-DP (f = ``tradeoff``) with respect to each canary, at
    ``significance``.

    The paper's bound runs backwards over the number of correct guesses: r and h bound the
    probability mass of "this many or more correct" and of the complementary wrong guesses;
    each step lets f push mass from r into h (an f-DP mechanism cannot make right guesses
    much likelier than wrong ones). The claim is rejected when the mass needed to explain the
    observed count exceeds the probability of making that many guesses (``guesses / m``)."""
    if not 0 <= correct <= guesses <= m:
        raise ValueError(f"need 0 <= correct <= guesses <= m, got {correct}, {guesses}, {m}")
    r = significance * correct / m
    h = significance * (guesses - correct) / m
    for i in range(correct - 1, -1, -1):
        h_next = max(h, tradeoff(1.0 - r))
        if h_next == h:  # nothing moves any more
            break
        r = min(r + i / (guesses - i) * (h_next - h), 1.0)
        h = h_next
    return r + h > guesses / m


def gdp_epsilon(mu: float, delta: float) -> float:
    """Epsilon of mu-Gaussian DP at ``delta`` (Dong, Roth, Su 2019, Corollary 2.13)."""
    if not 0 < delta < 1:
        raise ValueError(
            f"a Gaussian DP curve has a finite epsilon only at 0 < delta < 1, got {delta}"
        )
    if mu <= 0:
        return 0.0

    def excess(eps: float) -> float:
        return ndtr(-eps / mu + mu / 2) - math.exp(eps) * ndtr(-eps / mu - mu / 2) - delta

    if excess(0.0) <= 0:
        return 0.0
    high = 1.0
    while excess(high) > 0:
        high *= 2
        if high > MAX_EPSILON:
            return MAX_EPSILON
    return float(optimize.brentq(excess, 0.0, high, xtol=1e-9))


def fdp_epsilon_lower_bound(
    m: int, guesses: int, correct: int, delta: float, significance: float
) -> float:
    """The epsilon (at ``delta``) of the largest mu whose mu-GDP claim ``fdp_rejects``."""
    mu = _largest_rejected(
        lambda mu: fdp_rejects(gaussian_tradeoff(mu), m, guesses, correct, significance), 40.0
    )
    return gdp_epsilon(mu, delta)


def _largest_rejected(rejected: Callable[[float], bool], cap: float) -> float:
    """The largest x in [0, cap] with ``rejected(x)``, for a claim that gets weaker as x grows
    (0 when nothing is rejected; bisection to 1e-6 relative)."""
    if not rejected(0.0):
        return 0.0
    low, high = 0.0, 1.0
    while rejected(high):
        low, high = high, 2 * high
        if high > cap:
            return cap
    while high - low > 1e-6 * max(high, 1.0):
        mid = (low + high) / 2
        low, high = (mid, high) if rejected(mid) else (low, mid)
    return low


# --- one audit: several scores, several tests, one union bound ----------------------------
@dataclass
class Bound:
    """One method's bound: the best guess count's, at ``confidence`` (its share of the union
    bound)."""

    method: str
    score: str  # which canary score it guessed from
    epsilon_lower_bound: float
    guesses: int
    correct: int
    confidence: float
    per_count: list[dict] = field(default_factory=list)


@dataclass
class AuditResult:
    epsilon_lower_bound: float  # the tightest (largest) bound, holding at ``confidence``
    method: str  # which gave it
    canaries: int  # m
    included: int
    confidence: float
    delta: float
    bounds: dict[str, Bound]

    def to_dict(self) -> dict:
        record = asdict(self)
        for name, bound in self.bounds.items():
            record[f"epsilon_lower_bound_{name}"] = bound.epsilon_lower_bound
        return record


def audit(
    scores: np.ndarray | dict[str, np.ndarray],
    included: np.ndarray,
    delta: float,
    confidence: float = 0.95,
    guess_fractions: Sequence[float] = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2),
    methods: dict[str, tuple[str, str]] | None = None,
) -> AuditResult:
    """Bounds from canary ``scores`` (one array, or named arrays) and their inclusion flags.

    ``methods``: name -> (test, score name), the test one of METHODS; by default ``steinke``
    and ``fdp`` on the single score. Each test tries every guess fraction (Steinke: half "in"
    at the top, half "out" at the bottom; f-DP: all "in" at the top) at significance
    (1 - confidence) / (methods x fractions)."""
    if not isinstance(scores, dict):
        scores = {"score": scores}
    if methods is None:
        (name,) = scores
        methods = {test: (test, name) for test in METHODS}
    included = np.asarray(included, dtype=bool)
    m = len(included)
    for name, s in scores.items():
        if len(s) != m or m == 0:
            raise ValueError(f"{len(s)} {name} scores but {m} inclusion flags")
    for test, score in methods.values():
        if test not in METHODS or score not in scores:
            raise ValueError(f"unknown audit method {test!r} on score {score!r}")
    tests = len(methods) * len(guess_fractions)
    significance = (1 - confidence) / tests
    bounds = {}
    for name, (test, score) in methods.items():
        order = np.argsort(-np.asarray(scores[score], dtype=float), kind="stable")
        rows = []
        for fraction in guess_fractions:
            if test == "steinke":
                k = max(1, int(round(fraction * m / 2)))
                correct = int(included[order[:k]].sum() + (~included[order[m - k :]]).sum())
                eps = epsilon_lower_bound(m, 2 * k, correct, delta, significance)
                rows.append({"guesses": 2 * k, "correct": correct, "epsilon_lower_bound": eps})
            else:
                k = max(1, int(round(fraction * m)))
                correct = int(included[order[:k]].sum())
                eps = fdp_epsilon_lower_bound(m, k, correct, delta, significance)
                rows.append({"guesses": k, "correct": correct, "epsilon_lower_bound": eps})
        best = max(rows, key=lambda r: r["epsilon_lower_bound"])
        share = 1 - significance * len(guess_fractions)
        bounds[name] = Bound(name, score, best["epsilon_lower_bound"], best["guesses"],
                             best["correct"], share, rows)  # fmt: skip
    tightest = max(bounds.values(), key=lambda b: b.epsilon_lower_bound)
    return AuditResult(tightest.epsilon_lower_bound, tightest.method, m, int(included.sum()),
                       confidence, delta, bounds)  # fmt: skip
