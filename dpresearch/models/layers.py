"""Building blocks shared by the models: the normalization choice and ViT's free parameters."""

from __future__ import annotations

import torch
from torch import nn

NORMS = ("group", "batch", "none")


def norm2d(kind: str, channels: int, groups: int) -> nn.Module:
    """GroupNorm (DP-compatible), BatchNorm (non-private baselines only) or nothing."""
    if kind == "group":
        return nn.GroupNorm(min(groups, channels), channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"model.norm must be one of {NORMS}, got {kind!r}")


class PositionEmbedding(nn.Module):
    """Adds a learned (1, T, D) embedding. A module (not a bare parameter) so DP engines can
    compute its per-example gradient: it is the output gradient itself."""

    def __init__(self, tokens: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight


class ClassToken(nn.Module):
    """Prepends a learned class token; per-example gradient = output gradient at position 0."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.weight.expand(len(x), -1, -1), x], dim=1)
