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
from torch.nn import functional as F

from dpresearch.privacy.engines.base import (
    Engine,
    Factors,
    example_losses,
    float32,
    without_padding,
)
from dpresearch.privacy.units import Units

_OPACUS_EMBEDDING_GRAD = GradSampleModule.GRAD_SAMPLERS[nn.Embedding]
_OPACUS_EMBEDDING_NORM = GradSampleModuleFastGradientClipping.NORM_SAMPLERS[nn.Embedding]
# Opacus 1.6 gives an Embedding's padding row a per-example gradient that autograd never
# applies (norms too large, the padding row moves): its rules get the masked gradient.


@register_grad_sampler(nn.Embedding)
def _embedding(layer, activations, backprops: torch.Tensor):
    backprops = without_padding(layer, activations[0], backprops)
    return _OPACUS_EMBEDDING_GRAD(layer, activations, backprops)


@register_norm_sampler(nn.Embedding)
def _embedding_norm(layer, activations, backprops: torch.Tensor):
    backprops = without_padding(layer, activations[0], backprops)
    return _OPACUS_EMBEDDING_NORM(layer, activations, backprops)


_OPACUS_LAYER_NORM_GRAD = GradSampleModule.GRAD_SAMPLERS[nn.LayerNorm]


@register_grad_sampler(nn.LayerNorm)
def _layer_norm(layer: nn.LayerNorm, activations, backprops: torch.Tensor):
    """Opacus 1.6 reads ``layer.bias.requires_grad`` and crashes on LayerNorm(bias=False)."""
    if layer.bias is not None:
        return _OPACUS_LAYER_NORM_GRAD(layer, activations, backprops)
    weight = layer.weight
    if weight is None or not weight.requires_grad:
        return {}
    normalized = F.layer_norm(activations[0], layer.normalized_shape, eps=layer.eps)
    grads = normalized * backprops
    dims = tuple(range(1, grads.dim() - weight.dim()))
    return {weight: grads.sum(dims) if dims else grads}


def unused_norms(n: int, param: nn.Parameter, name: str, engine: str) -> torch.Tensor:
    """Zero norms for a parameter without a per-example record, if autograd agrees it got no
    gradient; otherwise some use of it went unseen, and reading zero would break clipping."""
    if param.grad is not None and bool(param.grad.ne(0).any()):
        raise RuntimeError(
            f"the {engine} engine recorded no per-example gradient for parameter {name}, though "
            "it has a gradient: some use of it bypasses its layer's rule (a functional use, a "
            "tied weight, an input layout the rule does not read); use clipping.engine=vmap"
        )
    return torch.zeros(n, device=param.device)


def opacus_supported(module: nn.Module) -> str | None:
    """Why Opacus (hooks and ghost engines) cannot handle ``module`` exactly; None if it can.

    Beyond a registered rule, Opacus 1.6's rules are wrong (not refused) for: non-zero padding
    modes (they unfold with zero padding), ``scale_grad_by_freq`` (ignored), EmbeddingBag
    with a repeated id in a bag, and sequence-first layers (the engines assume batch first)."""
    if type(module) not in GradSampleModule.GRAD_SAMPLERS:
        return "Opacus has no per-sample gradient rule for it"
    if getattr(module, "padding_mode", "zeros") != "zeros":
        return f"Opacus' rule assumes zero padding (padding_mode={module.padding_mode!r})"
    if getattr(module, "scale_grad_by_freq", False):
        return "Opacus' rule ignores scale_grad_by_freq=True"
    if isinstance(module, nn.EmbeddingBag):
        return "Opacus' EmbeddingBag rule is wrong when an id repeats within a bag"
    return None


def _in_float32(sampler: Callable) -> Callable:
    """An Opacus rule that reads float32 copies of its activations and output gradients:
    under mixed precision the per-example gradients (or norms) are float32, so their norms
    and clipped sum are too."""
    if getattr(sampler, "float32_inputs", False):
        return sampler

    def wrapped(layer, activations, backprops):
        return sampler(layer, [float32(a) for a in activations], float32(backprops))

    wrapped.float32_inputs = True
    return wrapped


def rules_in_float32(gsm: nn.Module) -> None:
    """``gsm`` (an Opacus GradSampleModule) reads float32 copies through every rule registered
    by now (Opacus looks its rules up on the instance): its own wrapped registries shadow the
    class-wide ones, which stay as they are for anyone else using Opacus in this process."""
    for name in ("GRAD_SAMPLERS", "NORM_SAMPLERS"):
        registry = getattr(type(gsm), name, None)
        if registry is not None:
            object.__setattr__(gsm, name, {t: _in_float32(s) for t, s in registry.items()})


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
        rules_in_float32(self.gsm)

    def run(self, forward: Callable[[], Any], batch: Any = None, units: Units | None = None) -> Any:
        for p in self.params:
            p.grad_sample = None
            p.grad = None
        output = forward()
        example_losses(output).sum().backward()
        n = len(example_losses(output))
        # A trainable parameter no layer used has no grad_sample: zero for every example.
        grad_samples = [p.grad_sample for p in self.params]
        if units is not None:  # each unit's weighted sum of its rows' gradients, clipped once
            grad_samples = [None if g is None else units.group(g) for g in grad_samples]
            n = units.count
        norms = torch.stack(
            [
                g.reshape(n, -1).norm(2, dim=1)
                if g is not None
                else unused_norms(n, p, name, self.name)
                for g, p, name in zip(grad_samples, self.params, self.param_names)
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
