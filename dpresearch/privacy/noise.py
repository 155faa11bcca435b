"""The Gaussian mechanism's one step: noise of std sigma*C on a clipped gradient sum.

Two sources. The default is a seeded ``torch.Generator``: reproducible (the same seed gives the
same run, and a resumed run continues the same stream), and right for research. With
``privacy.randomness=secure`` the noise (and the batch sampling, see
dpresearch.data.samplers) comes from the operating system's cryptographically
secure generator (``os.urandom``) through the Box-Muller transform in float64. Nobody can
reproduce or predict it, which is what a deployment that publishes the model needs. It costs
CPU time per step, about 8 bytes of entropy per parameter (see the README for the measured
cost).
"""

from __future__ import annotations

import math
import os

import torch


def add_noise(summed: torch.Tensor, std: float, generator: torch.Generator | None) -> torch.Tensor:
    """``summed + N(0, std^2)`` per coordinate, drawn from ``generator`` (on its device), or
    from the secure source when ``generator`` is None."""
    if std == 0:
        return summed.clone()
    dtype = torch.promote_types(summed.dtype, torch.float32)  # never a bfloat16/half Gaussian
    return summed.to(dtype) + gaussian(summed, std, generator)


def gaussian(like: torch.Tensor, std: float, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, std^2) in ``like``'s shape and device, in float32 or wider (zeros, and no draw,
    when std is 0)."""
    dtype = torch.promote_types(like.dtype, torch.float32)
    if std == 0:
        return torch.zeros(like.shape, device=like.device, dtype=dtype)
    if generator is None:
        noise = secure_normal(like.numel(), std).view(like.shape)
        return noise.to(device=like.device, dtype=dtype)
    return torch.normal(
        0.0, std, size=like.shape, generator=generator, device=like.device, dtype=dtype
    )


def secure_normal(n: int, std: float) -> torch.Tensor:
    """``n`` draws of N(0, std^2) from ``os.urandom`` (Box-Muller, float64 on the CPU)."""
    half = (n + 1) // 2
    bits = torch.frombuffer(bytearray(os.urandom(16 * half)), dtype=torch.int64)
    # 53 random bits -> uniform in (0, 1]: never 0, so the logarithm is finite.
    u = ((bits >> 11) & ((1 << 53) - 1)).double().add_(1.0).mul_(2.0**-53)
    u1, u2 = u[:half], u[half:]
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = (2 * math.pi) * u2
    z = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)])[:n]
    return z.mul_(std)
