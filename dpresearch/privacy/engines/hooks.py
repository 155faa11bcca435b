"""The ``hooks`` engine: Opacus materializes per-example gradients with module hooks.

Besides Opacus' own layers, it learns the free parameters of our ViT here: an additive position
embedding's per-example gradient is the output gradient; a prepended class token's is the
output gradient at position 0.
"""

from __future__ import annotations

import warnings

import torch
from opacus import GradSampleModule
from opacus.grad_sample import register_grad_sampler
from torch import nn

from dpresearch.models.layers import ClassToken, PositionEmbedding


@register_grad_sampler(PositionEmbedding)
def _position_embedding(layer, activations, backprops: torch.Tensor):
    return {layer.weight: backprops.unsqueeze(1)}


@register_grad_sampler(ClassToken)
def _class_token(layer, activations, backprops: torch.Tensor):
    return {layer.weight: backprops[:, :1].unsqueeze(1)}


def supported_types() -> set[type]:
    return set(GradSampleModule.GRAD_SAMPLERS)


def attach(module: nn.Module) -> GradSampleModule:
    """Hook every trainable layer of ``module`` in place; ``.remove_hooks()`` undoes it."""
    # The first layer's input needs no gradient; torch warns on every step that the full
    # backward hook fires anyway, which is what Opacus relies on.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    return GradSampleModule(module, batch_first=True, loss_reduction="mean", strict=True)
