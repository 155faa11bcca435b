"""The Gaussian mechanism's one step: noise of std sigma*C on a clipped gradient sum."""

from __future__ import annotations

import torch


def add_noise(summed: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """``summed + N(0, std^2)`` per coordinate, drawn from ``generator`` (on its device)."""
    if std == 0:
        return summed.clone()
    noise = torch.normal(
        0.0, std, size=summed.shape, generator=generator, device=summed.device, dtype=summed.dtype
    )
    return summed + noise
