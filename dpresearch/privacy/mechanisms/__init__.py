"""Noise mechanisms (the ``noise`` config group): what a DP step adds to its clipped sum.

- ``independent`` (default): DP-SGD's fresh Gaussian noise each step.
- ``banded_mf``: BandMF, correlated noise from a b-banded Toeplitz matrix factorization
  (Choquette-Choo et al. 2023, "(Amplified) banded matrix factorization"; McKenna 2024). Its
  privacy is amplified by cyclic Poisson sampling in at least b groups (the paper's Thm. 4):
  it then equals DP-SGD with sampling rate b E / N and ceil(T / b) steps, at the same noise
  multiplier, because an example's steps are b apart and each column of the b-banded C has
  norm at most 1. So ``sampler=cyclic_poisson`` with ``sampler.groups >= noise.bands`` is
  required, and its accountant is the usual one, composed over participations.

A mechanism names the samplers its accountant covers; ``check_sampler`` refuses any other
before training. ``stream(steps)`` builds the per-run noise state (``streams``).
"""

from __future__ import annotations

from dataclasses import dataclass

from dpresearch.privacy.mechanisms.strategies import REDUCTIONS, banded_toeplitz
from dpresearch.privacy.mechanisms.streams import BandedStream, IndependentStream
from dpresearch.privacy.spec import PrivacyConfigError


@dataclass
class NoiseMechanism:
    """Config of the ``noise`` group."""

    name = "base"

    def check_sampler(self, sampling) -> None:
        """Raise PrivacyConfigError when the accountant does not cover ``sampling``."""

    def stream(self, steps: int):
        raise NotImplementedError

    def record(self, steps: int) -> dict:
        """summary.json's ``noise``: the mechanism and what it keeps."""
        return {"mechanism": self.name}


@dataclass
class IndependentNoise(NoiseMechanism):
    name = "independent"

    def stream(self, steps: int) -> IndependentStream:
        return IndependentStream()

    def record(self, steps: int) -> dict:
        return {"mechanism": self.name, "buffers": 0}


@dataclass
class BandedMF(NoiseMechanism):
    """BandMF with ``bands`` bands, its strategy optimised for ``horizon`` steps (None: the
    run's planned steps) and the ``reduction`` of the prefix sums' squared errors (mean or
    max)."""

    bands: int = 4
    reduction: str = "mean"
    horizon: int | None = None

    name = "banded_mf"

    def __post_init__(self) -> None:
        if self.bands < 1:
            raise PrivacyConfigError(f"noise.bands must be >= 1, got {self.bands}")
        if self.horizon is not None and self.horizon < self.bands:
            raise PrivacyConfigError(
                f"noise.horizon={self.horizon} must be at least noise.bands={self.bands} (or "
                "null: the run's planned steps)"
            )
        if self.reduction not in REDUCTIONS:
            raise PrivacyConfigError(
                f"noise.reduction={self.reduction!r}: choose one of {list(REDUCTIONS)}"
            )

    def check_sampler(self, sampling) -> None:
        period = sampling.participation_period
        if sampling.name != "cyclic_poisson" or period < self.bands:
            raise PrivacyConfigError(
                f"noise=banded_mf with bands={self.bands} is accounted only under cyclic "
                "Poisson sampling in at least as many groups (its amplification needs any two "
                f"steps of one example at least {self.bands} apart); got sampler="
                f"{sampling.name} (participation period {period}): use "
                f"sampler=cyclic_poisson sampler.groups={self.bands}"
            )

    def coefficients(self, steps: int):
        horizon = self.horizon or max(steps, self.bands)
        return banded_toeplitz(horizon, self.bands, self.reduction)

    def stream(self, steps: int) -> BandedStream:
        return BandedStream(self.coefficients(steps))

    def record(self, steps: int) -> dict:
        return {"mechanism": self.name, "bands": self.bands, "reduction": self.reduction,
                "horizon": self.horizon or max(steps, self.bands),
                "coefficients": self.coefficients(steps).tolist(),
                "buffers": self.bands - 1}  # fmt: skip


__all__ = ["BandedMF", "IndependentNoise", "NoiseMechanism"]
