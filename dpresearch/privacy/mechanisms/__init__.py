"""Noise mechanisms (the ``noise`` config group): what a DP step adds to its clipped sum.

- ``independent`` (default): DP-SGD's fresh Gaussian noise each step.
- ``banded_mf``: BandMF, correlated noise from a b-banded Toeplitz matrix factorization
  (Choquette-Choo et al. 2023, "(Amplified) banded matrix factorization"; McKenna 2024). Its
  privacy is amplified by cyclic Poisson sampling in at least b groups (the paper's Thm. 4):
  it then equals DP-SGD with sampling rate b E / N and ceil(T / b) steps, at the same noise
  multiplier, because an example's steps are b apart and each column of the b-banded C has
  norm at most 1. So ``sampler=cyclic_poisson`` with ``sampler.groups >= noise.bands`` is
  required, and its accountant is the usual one, composed over participations.
- ``blt``: a buffered linear Toeplitz strategy (Dvijotham et al. 2024; McMahan et al. 2024,
  "Don't use tree aggregation, use BLTs"), optimised for the run's steps under (k, b)
  participation: any two steps of one example at least b apart, b the cyclic sampler's groups
  (``sampler=cyclic_epochs``: one group per step of an epoch). Not banded, so no
  amplification: its accountant is the Gaussian mechanism on C x (``BLTStream``).

A mechanism names the samplers its accountant covers; ``check_sampler`` refuses any other
before training. ``stream(steps)`` builds the per-run noise state (``streams``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dpresearch.privacy.mechanisms.strategies import REDUCTIONS, banded_toeplitz, blt
from dpresearch.privacy.mechanisms.streams import BandedStream, BLTStream, IndependentStream
from dpresearch.privacy.spec import PrivacyConfigError


@dataclass
class NoiseMechanism:
    """Config of the ``noise`` group."""

    name = "base"

    def check_sampler(self, sampling) -> None:
        """Raise PrivacyConfigError when the accountant does not cover ``sampling``."""

    def stream(self, steps: int, period: int = 1):
        """The per-run noise state for ``steps`` planned steps, examples ``period`` apart."""
        raise NotImplementedError

    def record(self, steps: int, period: int = 1) -> dict:
        """summary.json's ``noise``: the mechanism and what it keeps."""
        return {"mechanism": self.name}


@dataclass
class IndependentNoise(NoiseMechanism):
    name = "independent"

    def stream(self, steps: int, period: int = 1) -> IndependentStream:
        return IndependentStream()

    def record(self, steps: int, period: int = 1) -> dict:
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

    def stream(self, steps: int, period: int = 1) -> BandedStream:
        return BandedStream(self.coefficients(steps))

    def record(self, steps: int, period: int = 1) -> dict:
        return {"mechanism": self.name, "bands": self.bands, "reduction": self.reduction,
                "horizon": self.horizon or max(steps, self.bands),
                "coefficients": self.coefficients(steps).tolist(),
                "buffers": self.bands - 1}  # fmt: skip


@dataclass
class BLT(NoiseMechanism):
    """A BLT with ``buffers`` buffers, optimised for ``horizon`` steps (None: the run's planned
    steps) under the run's (k, b) participation, ``reduction`` of the prefix sums' squared
    errors (mean or max)."""

    buffers: int = 4
    reduction: str = "mean"
    horizon: int | None = None

    name = "blt"

    def __post_init__(self) -> None:
        if self.buffers < 1:
            raise PrivacyConfigError(f"noise.buffers must be >= 1, got {self.buffers}")
        if self.reduction not in REDUCTIONS:
            raise PrivacyConfigError(
                f"noise.reduction={self.reduction!r}: choose one of {list(REDUCTIONS)}"
            )
        if self.horizon is not None and self.horizon < 1:
            raise PrivacyConfigError(f"noise.horizon must be >= 1 or null, got {self.horizon}")

    def check_sampler(self, sampling) -> None:
        if sampling.name != "cyclic_poisson":
            raise PrivacyConfigError(
                "noise=blt is accounted under cyclic sampling, where any two steps of one "
                f"example are at least sampler.groups apart; got sampler={sampling.name}: use "
                "sampler=cyclic_epochs (one group per step of an epoch)"
            )

    def parameters(self, steps: int, period: int):
        n = self.horizon or max(steps, 1)
        return blt(n, self.buffers, period, math.ceil(n / period), self.reduction)

    def stream(self, steps: int, period: int = 1) -> BLTStream:
        return BLTStream(*self.parameters(steps, period))

    def record(self, steps: int, period: int = 1) -> dict:
        decay, scale = self.parameters(steps, period)
        stream = BLTStream(decay, scale)
        return {"mechanism": self.name, "buffers": self.buffers, "reduction": self.reduction,
                "horizon": self.horizon or max(steps, 1), "decay": decay.tolist(),
                "scale": scale.tolist(),
                "sensitivity": stream.sensitivity(max(steps, 1), period)}  # fmt: skip


def stream_from_state(state: dict):
    """The noise stream a checkpoint's DP state describes (for its accounting)."""
    mechanism, saved = state.get("noise_mechanism", "independent"), state.get("noise_state")
    if mechanism == "blt":
        stream = BLTStream(saved["decay"], saved["scale"])
    elif mechanism == "banded_mf":
        stream = BandedStream(saved["coefficients"])
    else:
        return IndependentStream()
    stream.load_state_dict(saved)
    return stream


__all__ = ["BLT", "BandedMF", "IndependentNoise", "NoiseMechanism", "stream_from_state"]
