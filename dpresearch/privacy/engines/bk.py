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

from dpresearch.privacy.engines.base import Engine, Factors, example_losses, float32
from dpresearch.privacy.engines.bk_rules import OUTPUT_ONLY, RULES, PerExample, materialized
from dpresearch.privacy.spec import PrivacyConfigError
from dpresearch.privacy.units import Units


def _unused(param: nn.Parameter, n: int) -> PerExample:
    zeros = torch.zeros(n, device=param.device)
    return PerExample(param, zeros, lambda c: torch.zeros_like(param), "unused",
                      lambda: torch.zeros(n, *param.shape, device=param.device))  # fmt: skip


def _wide(sq: torch.Tensor) -> torch.Tensor:
    """Squared norms in float64 if they came so, else float32 (half-precision models)."""
    return sq if sq.dtype == torch.float64 else sq.float()


def _unit_sq_norms(record: PerExample, units: Units) -> torch.Tensor:
    """Squared norms of each unit's weighted sum of its rows' gradients: by the rule's own
    pooled form where it has one (weight matrices), else from materialized per-example
    gradients summed per unit."""
    if record.unit_sq_norms is not None:
        return _wide(record.unit_sq_norms(units))
    grouped = units.group(_wide(record.per_example()))
    return grouped.reshape(units.count, -1).pow(2).sum(1)


def trainable_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules that own a trainable parameter. A parameter a module re-registers from
    its submodules (Opacus' DPLSTM exposes its cells' weights under torch's LSTM names)
    belongs to the submodule; a weight tied between two unrelated modules belongs to both."""
    direct = {m: {id(p) for p in m.parameters(recurse=False) if p.requires_grad}
              for m in module.modules()}  # fmt: skip
    out = []
    for path, m in module.named_modules():
        below = set().union(*(direct[c] for c in m.modules() if c is not m))
        if direct[m] - below:
            out.append((path, m))
    return out


class BookKeepingEngine(Engine):
    name = "bk"

    def __init__(self, module: nn.Module, factors: Factors, per_layer: bool = False):
        super().__init__(module, factors, per_layer)
        self._trainable = {id(p) for p in self.params}
        self._layers = trainable_layers(module)
        self._paths = {m: path for path, m in self._layers}
        self._anchor = torch.zeros((), requires_grad=True)
        self._records: list[PerExample] = []
        self._active = False
        self.layer_modes: dict[str, str] = {}  # "path.param" -> ghost | materialized
        self.kept_inputs: dict[str, bool] = {}  # layer path -> input activations held
        self._handles = [m.register_forward_hook(self._forward_hook) for _, m in self._layers]

    @torch.compiler.disable
    def _forward_hook(self, module: nn.Module, inputs: tuple, output: Any) -> Any:
        if not self._active:
            return None
        weight = getattr(module, "weight", None)
        keep = (
            weight is not None and id(weight) in self._trainable and type(module) not in OUTPUT_ONLY
        )
        # Each call keeps its own input: a layer called twice (shared weights, a recurrent
        # cell) gives one record per call, summed per example in ``_combined``.
        held = [inputs[0].detach() if keep else None]
        self.kept_inputs[self._paths[module]] = keep

        def hook(grad: torch.Tensor) -> None:
            # Let go of the input once recorded: the graph (and this hook) lives until the
            # whole backward ends, and would otherwise keep every layer's input to the end.
            self._record(module, held.pop(), grad)

        if not output.requires_grad:  # a first layer: nothing upstream needs a gradient
            output = output + self._anchor.to(output.device, output.dtype)
        output.register_hook(hook)
        return output

    def _record(self, module: nn.Module, a: torch.Tensor | None, grad: torch.Tensor) -> None:
        # Mixed precision: the rules read float32 copies (norms and sums in float32).
        records = RULES[type(module)](module, float32(a), float32(grad.detach()), self._trainable)
        self._records.extend(records)

    def _combined(self, n: int) -> list[PerExample]:
        """One record per trainable parameter. A parameter used several times (a tied
        embedding and head, a layer called twice) has per-example gradient the SUM of its
        uses' (its norm is not the sum of their norms): materialized and added."""
        uses: dict[int, list[PerExample]] = {}
        for r in self._records:
            uses.setdefault(id(r.param), []).append(r)
        out = []
        for p in self.params:
            found = uses.get(id(p))
            if not found:  # a trainable parameter no layer used: zero for every example
                out.append(_unused(p, n))
            elif any(len(r.sq_norms) != n for r in found):
                names = {id(q): name for name, q in self.module.named_parameters()}
                raise PrivacyConfigError(
                    f"parameter {names[id(p)]}: its layer saw a batch of "
                    f"{len(found[0].sq_norms)} while the loss has {n} examples; its input is "
                    "shared across the batch (e.g. position ids of shape (1, T), broadcast), so "
                    "autograd sums the examples' gradients before any rule sees them. Give it "
                    "one row per example (expand the input) or use clipping.engine=vmap"
                )
            elif len(found) == 1:
                out.append(found[0])
            else:
                total = sum(r.per_example() for r in found)
                out.append(materialized(p, total, "combined"))
        return out

    def run(self, forward: Callable[[], Any], batch: Any = None, units: Units | None = None) -> Any:
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
            records = self._combined(len(example_losses(output)))
            if units is None:
                sq = torch.stack([_wide(r.sq_norms) for r in records], 1)
                factor = self._clip_factors(sq.clamp(min=0).sqrt())
            else:  # a unit's norm has its rows' cross terms: from materialized unit sums
                sq = torch.stack([_unit_sq_norms(r, units) for r in records], 1)
                factor = units.expand(self._clip_factors(sq.sqrt()))
            self._add([r.weighted_sum(factor[:, j]) for j, r in enumerate(records)])
            if not self.layer_modes:
                names = {id(p): n for n, p in self.module.named_parameters()}
                self.layer_modes = {names[id(r.param)]: r.mode for r in records}
        self._records.clear()
        return output

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
