"""Optimised strategies of the matrix-factorization mechanisms, in float64 torch.

``banded_toeplitz(n, bands)``: the b-banded lower-triangular Toeplitz strategy C minimising
the error of the n prefix sums times C's squared sensitivity (the objective of McKenna 2024,
"Scaling up the banded matrix factorization mechanism", as jax_privacy's
``toeplitz.optimize_banded_toeplitz``: mean squared error over the n queries by default,
single-participation sensitivity ||c||, scale-free), by L-BFGS from the optimal max-error
coefficients of Fichtenberger et al. Returned with ||c|| = 1: each column of C has norm at
most 1 (the last b - 1 columns are truncated; we do not rescale them, unlike jax_privacy's
optional column normalisation), so one participation moves C x by at most C_clip.

Results are cached in process by their arguments: a run, its calibration and its
accountant ask for the same strategy.
"""

from __future__ import annotations

import functools

import torch

from dpresearch.privacy.mechanisms import toeplitz

REDUCTIONS = ("mean", "max")


def max_error_coefficients(n: int) -> torch.Tensor:
    """C = A^{1/2} for the prefix workload: c_k = prod_{j<=k} (2j - 1) / (2j) (Fichtenberger,
    Henzinger and Upadhyay 2023), optimal for max error under single participation."""
    k = torch.arange(n, dtype=torch.float64)
    ratios = (2 * k - 1) / (2 * k).clamp(min=1)
    ratios[0] = 1.0
    return torch.cumprod(ratios, 0)


def banded_toeplitz(n: int, bands: int, reduction: str = "mean") -> torch.Tensor:
    """The optimised b-banded Toeplitz strategy for n steps: (bands,) float64, unit norm."""
    return torch.tensor(_banded_toeplitz(n, bands, reduction), dtype=torch.float64)


@functools.lru_cache(maxsize=64)
def _banded_toeplitz(n: int, bands: int, reduction: str, max_iter: int = 500):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not 1 <= bands <= n:
        raise ValueError(f"bands must be in 1..{n} (the steps), got {bands}")
    if bands == 1:
        return (1.0,)  # C = I: independent noise, DP-SGD
    coef = max_error_coefficients(bands).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([coef], lr=1, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-12,
                            tolerance_change=1e-15)  # fmt: skip

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = toeplitz.loss(coef, n, reduction)
        value.backward()
        return value

    opt.step(closure)
    coef = coef.detach()
    return tuple((coef / coef.norm()).tolist())
