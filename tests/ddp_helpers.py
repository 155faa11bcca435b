"""Test-only models, named in `model._target_`: `ddp_helpers.X` from `python run.py`
subprocesses (the tests put this folder on PYTHONPATH), `tests.ddp_helpers.X` in-process."""

from __future__ import annotations

import os

import torch
from torch import nn


class ZeroOutputNet(nn.Module):
    """A linear classifier started at zero whose output is multiplied by 0: every per-example
    gradient is exactly zero, so each DP update is pure noise (its std can be measured)."""

    def __init__(self, num_classes: int, in_channels: int, in_features: int = 64, **_: object):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) * 0.0


class FailingNet(nn.Module):
    """A linear classifier whose process of local rank ``rank`` raises in its
    ``fail_at``-th training forward pass (a crashing rank, deliberately)."""

    def __init__(
        self, num_classes: int, in_channels: int, rank: int = 1, fail_at: int = 8, **_: object
    ):
        super().__init__()
        self.fc = nn.Linear(64, num_classes)
        self.rank, self.fail_at, self.calls = rank, fail_at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if int(os.environ.get("LOCAL_RANK", 0)) == self.rank and self.calls >= self.fail_at:
                raise RuntimeError(f"deliberate failure on rank {self.rank}")
        return self.fc(x.flatten(1))


class FunctionalReuseNet(nn.Module):
    """A head whose weight is used a second time through ``F.linear``: no layer rule sees that
    use, so bk's and Opacus' per-example gradients are wrong; vmap is exact."""

    def __init__(self, num_classes: int, in_channels: int, **_: object):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).mean((2, 3))
        h = h + torch.tanh(nn.functional.linear(self.head(h), self.head.weight.T))
        return self.head(h)
