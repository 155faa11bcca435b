"""The ``vmap`` engine: per-example gradients from ``torch.func``, exact on any model.

``vmap(grad(loss of one example))`` differentiates the model once per example, as a loop over
single examples would, but batched: it needs no rule per layer, so tied weights, functional
uses of a weight (``F.linear(h, emb.weight)``), sequence-first layouts and layers no other
engine knows are exact. It refuses only what has no per-example gradient at all (layers that
mix the examples of a batch). The batch is differentiated in chunks of examples so that the
per-example gradients in memory stay under ``memory_mb``; each chunk's norms, factors and
weighted sum are taken before the next (every clipping function is per example).

It needs the module's per-example loss as a pure function of a batch,
``module.example_losses(batch)`` (no logging, no data-dependent Python control flow); the
forward that Lightning sees (metrics, the logged loss) runs once more without gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from dpresearch.privacy.engines.base import Engine, Factors
from dpresearch.privacy.spec import PrivacyConfigError
from dpresearch.privacy.units import Units, split_units

MEMORY_MB = 512.0  # per-example gradients held at once


class _Losses(nn.Module):
    """``functional_call`` calls ``forward``: route it to the module's per-example losses."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.inner = module

    def forward(self, batch: Any) -> torch.Tensor:
        return self.inner.example_losses(batch)


def _one(batch: Any) -> Any:
    """One example of a vmapped batch as a batch of one."""
    if isinstance(batch, torch.Tensor):
        return batch.unsqueeze(0)
    if isinstance(batch, dict):
        return {k: _one(v) for k, v in batch.items()}
    return type(batch)(_one(v) for v in batch)


class VmapEngine(Engine):
    name = "vmap"

    def __init__(self, module: nn.Module, factors: Factors, per_layer: bool = False,
                 memory_mb: float = MEMORY_MB):  # fmt: skip
        super().__init__(module, factors, per_layer)
        if not callable(getattr(module, "example_losses", None)):
            raise PrivacyConfigError(
                f"clipping.engine=vmap needs the module's per-example loss as a pure function: "
                f"{type(module).__name__} has no example_losses(batch) method"
            )
        self._call = _Losses(module)
        names = {id(p): n for n, p in module.named_parameters()}
        self._names = [names[id(p)] for p in self.params]
        per_example_mb = sum(p.numel() * p.element_size() for p in self.params) / 2**20
        self.chunk = max(1, int(memory_mb / max(per_example_mb, 1e-9)))

        def loss_one(params: dict[str, torch.Tensor], example: Any) -> torch.Tensor:
            return functional_call(self._call, params, (_one(example),))[0]

        self._grads = vmap(grad(loss_one), in_dims=(None, 0), randomness="different")

    def run(self, forward: Callable[[], Any], batch: Any = None, units: Units | None = None) -> Any:
        if batch is None:
            raise PrivacyConfigError("the vmap engine needs the physical batch itself")
        with torch.no_grad():
            output = forward()  # what Lightning logs; the gradients come from below
        params = {"inner." + n: p.detach() for n, p in zip(self._names, self.params)}
        seen = []
        for rows, chunk_units in split_units(batch, units, self.chunk):  # whole units
            grads = self._grads(params, rows)
            per = [grads[k] for k in params]
            if chunk_units is not None:
                per = [chunk_units.group(g) for g in per]
            k = len(per[0])
            norms = torch.stack([g.reshape(k, -1).norm(2, dim=1) for g in per], 1)
            factor = self._clip_factors(norms)
            seen.append(self.last_param_norms)
            self._add(
                [
                    torch.einsum("i,i...->...", factor[:, j].to(g.dtype), g)
                    for j, g in enumerate(per)
                ]
            )
        if len(seen) > 1:
            self.last_param_norms = torch.cat(seen)
        return output
