"""The ``bk`` engine: book-keeping (Bu et al. 2022), one forward and ONE backward pass.

During a physical batch the trainable parameters are switched to ``requires_grad=False``, so
autograd computes only the gradients that flow between layers, never the (non-private) summed
parameter gradients. A forward hook on every trainable layer keeps its input activations and
puts a hook on its output that records the output gradient (a first layer's output, which
nothing upstream makes differentiable, is tied to a zero "anchor" that does). From each
layer's activations and output gradients the rules in ``bk_rules`` give per-example norms
(ghost norm or materialized, whichever is cheaper); once all norms are known, the clipped sum
is one weighted matrix product per layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dpresearch.privacy.engines.base import Engine, Factors, example_losses
from dpresearch.privacy.engines.bk_rules import OUTPUT_ONLY, RULES, PerExample
from dpresearch.privacy.spec import PrivacyConfigError


def _unused(param: nn.Parameter, n: int) -> PerExample:
    zeros = torch.zeros(n, device=param.device)
    return PerExample(param, zeros, lambda c: torch.zeros_like(param), "unused")


def trainable_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (path, m)
        for path, m in module.named_modules()
        if any(p.requires_grad for p in m.parameters(recurse=False))
    ]


class BookKeepingEngine(Engine):
    name = "bk"

    def __init__(self, module: nn.Module, factors: Factors, per_layer: bool = False):
        super().__init__(module, factors, per_layer)
        self._trainable = {id(p) for p in self.params}
        self._layers = trainable_layers(module)
        self._paths = {m: path for path, m in self._layers}
        self._anchor = torch.zeros((), requires_grad=True)
        self._inputs: dict[nn.Module, torch.Tensor | None] = {}
        self._records: list[PerExample] = []
        self._active = False
        self.layer_modes: dict[str, str] = {}  # "path.param" -> ghost | materialized
        self._handles = [m.register_forward_hook(self._forward_hook) for _, m in self._layers]

    @torch.compiler.disable
    def _forward_hook(self, module: nn.Module, inputs: tuple, output: Any) -> Any:
        if not self._active:
            return None
        if module in self._inputs:
            raise PrivacyConfigError(
                f"layer {self._paths[module]} ({type(module).__name__}) ran twice in one "
                "forward pass (shared weights); the bk engine cannot combine its per-example "
                "gradients: use clipping.engine=hooks"
            )
        weight = getattr(module, "weight", None)
        keep = (
            weight is not None
            and id(weight) in self._trainable
            and not isinstance(module, OUTPUT_ONLY)
        )
        self._inputs[module] = inputs[0].detach() if keep else None
        if not output.requires_grad:  # a first layer: nothing upstream needs a gradient
            output = output + self._anchor.to(output.device, output.dtype)
        output.register_hook(lambda grad: self._record(module, grad))
        return output

    def _record(self, module: nn.Module, grad: torch.Tensor) -> None:
        records = RULES[type(module)](
            module, self._inputs.pop(module), grad.detach(), self._trainable
        )
        self._records.extend(records)

    def run(self, forward: Callable[[], Any]) -> Any:
        self._inputs.clear()
        self._records.clear()
        for p in self.params:
            p.requires_grad_(False)
        self._active = True
        try:
            output = forward()
            self._active = False
            example_losses(output).sum().backward()
        finally:
            self._active = False
            for p in self.params:
                p.requires_grad_(True)
        with torch.no_grad():
            by_param = {id(r.param): r for r in self._records}
            n = len(example_losses(output))
            # A trainable parameter no layer used has zero gradient for every example.
            records = [by_param.get(id(p)) or _unused(p, n) for p in self.params]
            sq = torch.stack([r.sq_norms.float() for r in records], 1)
            factor = self._clip_factors(sq.clamp(min=0).sqrt())
            self._add([r.weighted_sum(factor[:, j]) for j, r in enumerate(records)])
            if not self.layer_modes:
                names = {id(p): n for n, p in self.module.named_parameters()}
                self.layer_modes = {names[id(r.param)]: r.mode for r in self._records}
        self._inputs.clear()
        self._records.clear()
        return output

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
