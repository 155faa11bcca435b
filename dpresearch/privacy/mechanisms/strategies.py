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


def blt_coefficients(decay: torch.Tensor, scale: torch.Tensor, n: int) -> torch.Tensor:
    """The Toeplitz coefficients of a buffered linear Toeplitz (BLT) strategy (Dvijotham et
    al. 2024; McMahan et al. 2024): c_0 = 1, c_t = sum_j scale_j decay_j^(t-1) for t >= 1."""
    powers = decay[None, :] ** torch.arange(n - 1, dtype=decay.dtype)[:, None]
    return torch.cat([decay.new_ones(1), powers @ scale])


def _blt_parts(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unconstrained parameters -> (decay in (0, 1), scale > 0 with sum(scale) < 1): the
    coefficients are then positive and non-increasing (c_1 = sum(scale) < 1 = c_0), where the
    min-separation sensitivity formula is exact."""
    d = (len(raw) - 1) // 2
    decay = torch.sigmoid(raw[:d])
    scale = torch.sigmoid(raw[-1]) * torch.softmax(raw[d : 2 * d], 0)
    return decay, scale


def blt(n: int, buffers: int, min_sep: int, participations: int | None, reduction: str = "mean",
        max_iter: int = 150) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The BLT strategy with ``buffers`` buffers minimising the ``reduction`` of the n prefix
    sums' squared errors times the squared sensitivity under (k, min_sep) participation
    (jax_privacy's ``buffered_toeplitz.optimize`` objective): (decay, scale), float64."""
    found = _blt(n, buffers, min_sep, participations, reduction, max_iter)
    return tuple(torch.tensor(v, dtype=torch.float64) for v in found)


@functools.lru_cache(maxsize=64)
def _blt(n: int, buffers: int, min_sep: int, participations: int | None, reduction: str,
         max_iter: int) -> tuple[tuple[float, ...], tuple[float, ...]]:  # fmt: skip
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if buffers < 1:
        raise ValueError(f"a BLT needs at least one buffer, got {buffers}")
    # Start with decays spread from 1 - n^(-1/d) up to 1 - 1/n and equal small scales.
    d = buffers
    target = 1 - torch.tensor([float(n) ** (-(j + 1) / d) for j in range(d)], dtype=torch.float64)
    raw = torch.cat([torch.logit(target.clamp(1e-6, 1 - 1e-9)), torch.zeros(d, dtype=torch.float64),
                     torch.tensor([0.0], dtype=torch.float64)]).requires_grad_(True)  # fmt: skip
    opt = torch.optim.LBFGS([raw], lr=1, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-12,
                            tolerance_change=1e-15)  # fmt: skip

    def closure() -> torch.Tensor:
        opt.zero_grad()
        coef = blt_coefficients(*_blt_parts(raw), n)
        value = toeplitz.loss(coef, n, reduction, min_sep, participations)
        value.backward()
        return value

    opt.step(closure)
    decay, scale = _blt_parts(raw.detach())
    return tuple(decay.tolist()), tuple(scale.tolist())
