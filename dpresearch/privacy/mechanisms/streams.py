"""The noise of each step, with the state a mechanism carries between steps.

A stream turns fresh Gaussian draws z_t (std sigma * C per coordinate, from the seeded
generator or the secure source) into the noise step t adds to its clipped sum:
- ``IndependentStream``: z_t itself (DP-SGD); no state.
- ``BandedStream``: (C^{-1} z)_t for a b-banded lower-triangular Toeplitz strategy C with
  coefficients c: x_t = (z_t - sum_{i=1}^{b-1} c_i x_{t-i}) / c_0, so it keeps the last b - 1
  noise vectors, (b - 1) x the trainable parameters, in float32 (or wider).

The state goes into checkpoints (``state_dict``), so a resumed run adds the noise the
uninterrupted run would have added, bit for bit. It lives on the process that adds noise
(rank 0 under DDP). The buffer is past noise: a checkpoint that holds it must be kept as
private as the data, because whoever reads it can subtract the correlated part of later
steps' noise.
"""

from __future__ import annotations

import math

import torch

from dpresearch.privacy.mechanisms import toeplitz
from dpresearch.privacy.mechanisms.strategies import blt_coefficients
from dpresearch.privacy.noise import add_noise, gaussian


class Accounted:
    """What the accountant composes for ``steps`` steps of a mechanism whose examples join at
    most one step in ``period``: (sample rate, noise multiplier, count) of a Poisson-subsampled
    Gaussian (``compute_epsilon``'s arguments). DP-SGD and BandMF (amplified, Thm. 4): the
    example's ceil(steps / period) participations at the sampler's rate, sigma unchanged."""

    def accounted(self, sample_rate: float, sigma: float, steps: int, period: int):
        return sample_rate, sigma, math.ceil(steps / period)


class IndependentStream(Accounted):
    """Independent Gaussian noise each step: DP-SGD."""

    buffers = 0  # parameter-sized vectors kept between steps

    def noised(self, sums: list[torch.Tensor], std: float, generator) -> list[torch.Tensor]:
        return [add_noise(s, std, generator) for s in sums]

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class BandedStream(Accounted):
    """Correlated noise C^{-1} z for a banded Toeplitz strategy with ``coefficients``."""

    def __init__(self, coefficients: torch.Tensor):
        self.coefficients = [float(c) for c in coefficients]
        if self.coefficients[0] <= 0:
            raise ValueError(f"a strategy's first coefficient must be > 0: {self.coefficients}")
        self.buffers = len(self.coefficients) - 1
        self._history: list[list[torch.Tensor]] = []  # newest first, at most `buffers` steps

    def noised(self, sums: list[torch.Tensor], std: float, generator) -> list[torch.Tensor]:
        c = self.coefficients
        noise = []
        for j, s in enumerate(sums):
            x = gaussian(s, std, generator)
            for i, past in enumerate(self._history, start=1):
                x.sub_(past[j], alpha=c[i])
            noise.append(x.div_(c[0]))
        if self.buffers:
            self._history = [noise, *self._history][: self.buffers]
        return [s.to(_wide(s)) + x for s, x in zip(sums, noise)]

    def state_dict(self) -> dict:
        return {"coefficients": self.coefficients,
                "history": [[x.clone() for x in step] for step in self._history]}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """Continue the checkpoint's mechanism: its coefficients (optimised for the steps the
        checkpointed run planned; any banded strategy of unit column norm keeps the privacy
        analysis, so a longer resumed run keeps them, as it keeps sigma) and its history."""
        coefficients = [float(c) for c in state["coefficients"]]
        if len(coefficients) != len(self.coefficients):
            raise ValueError(
                f"the checkpoint's banded strategy has {len(coefficients)} bands, this run's "
                f"{len(self.coefficients)}: resume with noise.bands={len(coefficients)}"
            )
        self.coefficients = coefficients
        self._history = [list(step) for step in state["history"]]


class BLTStream:
    """Correlated noise C^{-1} z for a buffered linear Toeplitz strategy (c_0 = 1, c_t =
    sum_j scale_j decay_j^(t-1)): sum_{s<t} c_{t-s} x_s = sum_j scale_j S_j with buffers
    S_j = sum_{s<t} decay_j^(t-1-s) x_s, so x_t = z_t - sum_j scale_j S_j, then
    S_j <- decay_j S_j + x_t. It keeps one parameter-sized buffer per j, whatever the steps.

    Accounting, without amplification: whatever the draws, one example moves C x by at most
    C_clip * sens, sens^2 the min-separation sensitivity of C over the steps taken (at most
    ceil(steps / period) participations, ``period`` apart; exact for the positive,
    non-increasing coefficients the optimiser returns). The whole run is then one Gaussian
    mechanism with noise multiplier sigma / sens (Denisov et al. 2022: adaptive inputs of a
    lower-triangular factorization cost no more), which ``compute_epsilon`` takes as one
    step at rate 1, composed exactly."""

    def __init__(self, decay: torch.Tensor, scale: torch.Tensor):
        self.decay = [float(v) for v in decay]
        self.scale = [float(v) for v in scale]
        if len(self.decay) != len(self.scale):
            raise ValueError(f"{len(self.decay)} decays but {len(self.scale)} scales")
        self.buffers = len(self.decay)
        self._state: list[list[torch.Tensor]] | None = None  # [buffer][parameter]

    def noised(self, sums: list[torch.Tensor], std: float, generator) -> list[torch.Tensor]:
        noise = []
        for j, s in enumerate(sums):
            x = gaussian(s, std, generator)
            if self._state is not None:
                for scale, buf in zip(self.scale, self._state):
                    x.sub_(buf[j], alpha=scale)
            noise.append(x)
        if self._state is None:
            self._state = [[x.clone() for x in noise] for _ in self.decay]
        else:
            for decay, buf in zip(self.decay, self._state):
                for b, x in zip(buf, noise):
                    b.mul_(decay).add_(x)
        return [s.to(_wide(s)) + x for s, x in zip(sums, noise)]

    def sensitivity(self, steps: int, period: int) -> float:
        coef = blt_coefficients(torch.tensor(self.decay, dtype=torch.float64),
                                torch.tensor(self.scale, dtype=torch.float64), steps)  # fmt: skip
        k = math.ceil(steps / period)
        return math.sqrt(float(toeplitz.minsep_sensitivity_squared(coef, steps, period, k)))

    def accounted(self, sample_rate: float, sigma: float, steps: int, period: int):
        if steps == 0:
            return 1.0, sigma, 0
        return 1.0, sigma / self.sensitivity(steps, period), 1

    def state_dict(self) -> dict:
        state = [[b.clone() for b in buf] for buf in self._state] if self._state else []
        return {"decay": self.decay, "scale": self.scale, "buffers": state}

    def load_state_dict(self, state: dict) -> None:
        """Continue the checkpoint's BLT (its parameters and buffers), as a banded stream does."""
        if len(state["decay"]) != self.buffers:
            raise ValueError(
                f"the checkpoint's BLT has {len(state['decay'])} buffers, this run's "
                f"{self.buffers}: resume with noise.buffers={len(state['decay'])}"
            )
        self.decay = [float(v) for v in state["decay"]]
        self.scale = [float(v) for v in state["scale"]]
        self._state = [list(buf) for buf in state["buffers"]] or None


def _wide(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)
