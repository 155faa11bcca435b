"""Lower-triangular Toeplitz matrices, each held as its first column: the algebra of the
banded and buffered (BLT) matrix-factorization mechanisms, in float64 torch, differentiable.

Notation follows jax_privacy's ``matrix_factorization``. The workload is A, the prefix sums
(A = T(1, 1, ...)). The strategy is C = T(c), with coefficients c its first column. The
noising matrix is C^{-1}, and the decoder is B = A C^{-1}. Training with correlated noise
releases A x + B z: step t's gradient carries the noise (C^{-1} z)_t. Errors are squared
and per query (row of B). A loss is the error reduced by mean or max, times the squared
sensitivity.
"""

from __future__ import annotations

import math

import torch


def as_float64(coef) -> torch.Tensor:
    return torch.as_tensor(coef, dtype=torch.float64)


def padded(coef, n: int) -> torch.Tensor:
    """The first ``n`` coefficients, zeros after ``len(coef)``."""
    coef = as_float64(coef)[:n]
    return torch.cat([coef, coef.new_zeros(n - len(coef))])


def materialize(coef, n: int) -> torch.Tensor:
    """The n x n lower-triangular Toeplitz matrix with first column ``coef``."""
    c = padded(coef, n)
    idx = torch.arange(n)
    lag = idx[:, None] - idx[None, :]
    return torch.where(lag >= 0, c[lag.clamp(min=0)], c.new_zeros(()))


def solve(coef, rhs) -> torch.Tensor:
    """x with T(coef) x = rhs (n = len(rhs)); differentiable in ``coef``. The product and the
    inverse of lower-triangular Toeplitz matrices are lower-triangular Toeplitz, so x is also
    the first column of T(coef)^{-1} T(rhs)."""
    rhs = as_float64(rhs)
    lower = materialize(coef, len(rhs))
    return torch.linalg.solve_triangular(lower, rhs[:, None], upper=False)[:, 0]


def inverse(coef, n: int) -> torch.Tensor:
    """The first column of T(coef)^{-1}: the noising matrix's coefficients."""
    return solve(coef, padded([1.0], n))


def per_query_error(strategy, n: int) -> torch.Tensor:
    """Squared error of each prefix sum under unit noise, (n,): the squared norm of each row
    of B = A C^{-1}, whose coefficients are C^{-1} applied to the all-ones column."""
    decoder = solve(strategy, torch.ones(n, dtype=torch.float64))
    return torch.cumsum(decoder**2, 0)


def max_participations(n: int, min_sep: int, cap: int | None = None) -> int:
    """At most ceil(n / min_sep) participations fit in n steps at least min_sep apart."""
    k = math.ceil(n / min_sep)
    return k if cap is None else min(k, cap)


def minsep_sensitivity_squared(strategy, n: int, min_sep: int, cap: int | None = None):
    """Squared L2 sensitivity of C = T(c) when one example joins at most k steps, any two at
    least ``min_sep`` apart: max over such patterns u of ||C u||^2.

    Exact for non-negative, non-increasing c: the worst case is then k participations exactly
    min_sep apart from the first step (Kalinin and Lampert 2024, Thm 2). Other c are first
    replaced by the non-increasing majorant of |c|, which gives an upper bound. This is
    jax_privacy's ``toeplitz.minsep_sensitivity_squared``."""
    c = padded(strategy, n).abs()
    c = torch.flip(torch.cummax(torch.flip(c, [0]), 0).values, [0])
    k = max_participations(n, min_sep, cap)
    c = torch.cat([c, c.new_zeros((-n) % min_sep)])
    v = c.reshape(-1, min_sep).cumsum(0).reshape(-1)  # v_t = sum_j c_{t - j min_sep}
    if min_sep * k < len(v):  # at most k participations: drop the terms beyond the k-th
        v = torch.cat([v[: min_sep * k], v[min_sep * k :] - v[: -min_sep * k]])
    v = v[:n]
    return v @ v


def loss(strategy, n: int, reduction: str = "mean", min_sep: int = 1, cap: int | None = 1):
    """The strategy's loss: reduced per-query squared error times squared sensitivity (under
    single participation by default, where the sensitivity is ||c||). Scale-free in c."""
    errors = per_query_error(strategy, n)
    error = errors.mean() if reduction == "mean" else errors[-1]  # max: the last query
    return error * minsep_sensitivity_squared(strategy, n, min_sep, cap)
