"""Building blocks shared by the models: the normalization choice and ViT's free parameters,
with the DP engines' per-example gradient rules for them (registered here, beside the layers:
the privacy package knows no model)."""

from __future__ import annotations

import torch
from opacus.grad_sample import register_grad_sampler
from torch import nn

from dpresearch.privacy.engines.bk_rules import materialized, register_bk_rule

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


# Per-example gradients: an additive position embedding's is the output gradient; a prepended
# class token's is the output gradient at position 0. Opacus (hooks, ghost) and bk alike.
@register_grad_sampler(PositionEmbedding)
def _position_embedding_grad(layer, activations, backprops: torch.Tensor) -> dict:
    return {layer.weight: backprops.unsqueeze(1)}


@register_grad_sampler(ClassToken)
def _class_token_grad(layer, activations, backprops: torch.Tensor) -> dict:
    return {layer.weight: backprops[:, :1].unsqueeze(1)}


@register_bk_rule(PositionEmbedding, reads_input=False)
def _position_embedding_bk(m: PositionEmbedding, a, b, trainable: set[int]) -> list:
    return [materialized(m.weight, b)] if id(m.weight) in trainable else []


@register_bk_rule(ClassToken, reads_input=False)
def _class_token_bk(m: ClassToken, a, b, trainable: set[int]) -> list:
    return [materialized(m.weight, b[:, :1])] if id(m.weight) in trainable else []
