"""The ``ghost`` engine: Opacus fast gradient clipping (Li et al. 2022; Bu et al.).

The first backward pass gives per-example gradient norms without per-example gradients
(the ghost-norm identity for Linear and Embedding, per-layer materialization elsewhere); the
second backward pass, of sum_i factor_i * loss_i, gives the clipped sum. Opacus' own optimizer
for this mode cannot accumulate over physical batches; here the engine adds each physical
batch's clipped sum to a running sum, like every other engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from torch import nn

from dpresearch.privacy.engines.base import Engine, Factors, example_losses
from dpresearch.privacy.engines.hooks import (
    quiet_full_backward_hook_warning,
    rules_in_float32,
    unused_norms,
)
from dpresearch.privacy.spec import PrivacyConfigError
from dpresearch.privacy.units import Units

_OPACUS_EMBEDDING_NORMS = GradSampleModuleFastGradientClipping.NORM_SAMPLERS[nn.Embedding]


def _embedding_norms(layer: nn.Embedding, activations: list, backprops: torch.Tensor) -> dict:
    """Opacus' ghost norms for an Embedding, on contiguous ids: Hugging Face BERT passes its
    position ids as an expanded view, on which Opacus' ``.view`` raises."""
    return _OPACUS_EMBEDDING_NORMS(layer, [a.contiguous() for a in activations], backprops)


GradSampleModuleFastGradientClipping.NORM_SAMPLERS[nn.Embedding] = _embedding_norms


PER_LAYER_REFUSAL = (
    "clipping=per_layer needs one factor per parameter and example; the ghost engine's second "
    "backward pass applies one per example: use clipping.engine=bk, hooks or vmap"
)

UNITS_REFUSAL = (
    "privacy units of several rows (privacy.unit=user or privacy.augmentations > 1) clip each "
    "unit's summed gradient, whose norm the ghost engine cannot compute (its per-row norms "
    "lack the cross terms between a unit's rows): use clipping.engine=bk, hooks or vmap"
)


class GhostEngine(Engine):
    name = "ghost"

    def __init__(self, module: nn.Module, factors: Factors, per_layer: bool = False):
        if per_layer:
            raise PrivacyConfigError(PER_LAYER_REFUSAL)
        super().__init__(module, factors)
        quiet_full_backward_hook_warning()
        # Opacus logs one INFO line per layer on every wrap; keep its warnings only.
        logging.getLogger("opacus").setLevel(logging.WARNING)
        self.gsm = GradSampleModuleFastGradientClipping(
            module, batch_first=True, loss_reduction="sum", strict=True, use_ghost_clipping=True
        )
        rules_in_float32(self.gsm)

    def run(self, forward: Callable[[], Any], batch: Any = None, units: Units | None = None) -> Any:
        if units is not None:
            raise PrivacyConfigError(UNITS_REFUSAL)
        for p in self.params:
            p._norm_sample = None  # an unused parameter keeps None: zero norm, not last step's
            p.grad = None
        output = forward()
        losses = example_losses(output)
        losses.sum().backward(retain_graph=True)  # pass 1: per-example norms
        n = len(losses)
        norms = torch.stack(
            [
                p._norm_sample
                if p._norm_sample is not None
                else unused_norms(n, p, name, self.name)
                for p, name in zip(self.params, self.param_names)
            ],
            1,
        )
        factor = self._clip_factors(norms)[:, 0].to(losses.dtype)
        for p in self.params:
            p.grad = None
        self.gsm.disable_hooks()
        try:
            (losses * factor).sum().backward()  # pass 2: the clipped sum
        finally:
            self.gsm.enable_hooks()
        self._add([p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params])
        for p in self.params:
            p.grad = None
        return output

    def close(self) -> None:
        self.gsm.remove_hooks()
