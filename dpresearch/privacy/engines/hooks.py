"""The ``hooks`` engine: Opacus materializes per-example gradients with module hooks.

The naive baseline: per-example gradients (batch x parameters) exist in memory, and their
norms and factor-weighted sum are taken directly. Besides Opacus' own layers it learns the free
parameters of our ViT here: an additive position embedding's per-example gradient is the
output gradient; a prepended class token's is the output gradient at position 0. It also
fixes Opacus' Embedding rules for ``padding_idx``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from opacus import GradSampleModule
from opacus.grad_sample import (
    GradSampleModuleFastGradientClipping,
    register_grad_sampler,
    register_norm_sampler,
)
from torch import nn

from dpresearch.models.layers import ClassToken, PositionEmbedding
from dpresearch.privacy.engines.base import Engine, Factors, example_losses


@register_grad_sampler(PositionEmbedding)
def _position_embedding(layer, activations, backprops: torch.Tensor):
    return {layer.weight: backprops.unsqueeze(1)}


@register_grad_sampler(ClassToken)
def _class_token(layer, activations, backprops: torch.Tensor):
    return {layer.weight: backprops[:, :1].unsqueeze(1)}


_OPACUS_EMBEDDING_GRAD = GradSampleModule.GRAD_SAMPLERS[nn.Embedding]
_OPACUS_EMBEDDING_NORM = GradSampleModuleFastGradientClipping.NORM_SAMPLERS[nn.Embedding]


def _without_padding(layer: nn.Embedding, ids: torch.Tensor, backprops: torch.Tensor):
    """Opacus 1.6 gives an Embedding's padding row a per-example gradient that autograd never
    applies: norms come out too large and the padding row moves. Zero those positions."""
    if layer.padding_idx is None:
        return backprops
    return backprops * (ids != layer.padding_idx).unsqueeze(-1).to(backprops.dtype)


@register_grad_sampler(nn.Embedding)
def _embedding(layer, activations, backprops: torch.Tensor):
    backprops = _without_padding(layer, activations[0], backprops)
    return _OPACUS_EMBEDDING_GRAD(layer, activations, backprops)


@register_norm_sampler(nn.Embedding)
def _embedding_norm(layer, activations, backprops: torch.Tensor):
    backprops = _without_padding(layer, activations[0], backprops)
    return _OPACUS_EMBEDDING_NORM(layer, activations, backprops)


def zero_norms(n: int, param: nn.Parameter) -> torch.Tensor:
    return torch.zeros(n, device=param.device)


def opacus_supported(module: nn.Module) -> str | None:
    """Why Opacus (hooks and ghost engines) cannot handle ``module``; None if it can."""
    if type(module) in GradSampleModule.GRAD_SAMPLERS:
        return None
    return "Opacus has no per-sample gradient rule for it"


def quiet_full_backward_hook_warning() -> None:
    # The first layer's input needs no gradient; torch warns on every step that the full
    # backward hook fires anyway, which is what Opacus relies on.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")


class HooksEngine(Engine):
    name = "hooks"

    def __init__(self, module: nn.Module, factors: Factors, per_layer: bool = False):
        super().__init__(module, factors, per_layer)
        quiet_full_backward_hook_warning()
        self.gsm = GradSampleModule(module, batch_first=True, loss_reduction="sum", strict=True)

    def run(self, forward: Callable[[], Any]) -> Any:
        output = forward()
        example_losses(output).sum().backward()
        n = len(example_losses(output))
        # A trainable parameter no layer used has no grad_sample: zero for every example.
        grad_samples = [p.grad_sample for p in self.params]
        norms = torch.stack(
            [
                g.reshape(n, -1).norm(2, dim=1) if g is not None else zero_norms(n, p)
                for g, p in zip(grad_samples, self.params)
            ],
            1,
        )
        factor = self._clip_factors(norms)
        self._add(
            [
                torch.einsum("i,i...->...", factor[:, j].to(g.dtype), g)
                if g is not None
                else torch.zeros_like(p)
                for j, (g, p) in enumerate(zip(grad_samples, self.params))
            ]
        )
        for p in self.params:
            p.grad_sample = None
            p.grad = None
        return output

    def close(self) -> None:
        self.gsm.remove_hooks()
