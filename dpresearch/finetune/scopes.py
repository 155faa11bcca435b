"""A scope decides which parameters require grad; the DP engines then skip what is frozen."""

from __future__ import annotations

from torch import nn


def parameter_counts(model: nn.Module) -> dict[str, float]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": trainable / total if total else 0.0,
    }


class Scope:
    name = "scope"

    def apply(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError


class Full(Scope):
    """Train every parameter."""

    name = "full"

    def apply(self, model: nn.Module) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
