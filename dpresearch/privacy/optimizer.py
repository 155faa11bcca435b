"""Opacus' DPOptimizer with the clipping function as a parameter.

Opacus hard-codes flat clipping; here per-example norms go through ``factors`` (fixed,
automatic, ...) and the clipped sum is the factor-weighted sum of per-example gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed


class ClippingDPOptimizer(DPOptimizer):
    def __init__(self, *args, factors: Callable[[torch.Tensor], torch.Tensor], **kwargs):
        super().__init__(*args, **kwargs)
        self.factors = factors

    def clip_and_accumulate(self) -> None:
        grad_samples = self.grad_samples
        if len(grad_samples[0]) == 0:  # an empty Poisson batch: nothing to add, noise follows
            factor = torch.zeros((0,), device=grad_samples[0].device)
        else:
            norms = torch.stack([g.reshape(len(g), -1).norm(2, dim=-1) for g in grad_samples], 1)
            factor = self.factors(norms.norm(2, dim=1))
        for p in self.params:
            _check_processed_flag(p.grad_sample)
            grad_sample = self._get_flat_grad_sample(p).to(p.dtype)
            grad = torch.einsum("i,i...", factor.to(grad_sample.device, p.dtype), grad_sample)
            p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad
            _mark_as_processed(p.grad_sample)
