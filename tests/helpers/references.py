"""The per-example references every engine and clipping test compares with: a loop over
single examples, each with its own backward pass; and the engines' clipped sum, run the way
the strategy runs them."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from dpresearch.privacy.batching import split_batch
from dpresearch.privacy.engines import make_engine
from dpresearch.privacy.self_check import LossModule


def one(x, i: int):
    """Example ``i`` of a batch of inputs (a tensor, or a dict of tensors for text)."""
    if isinstance(x, dict):
        return {k: v[i : i + 1] for k, v in x.items()}
    return x[i : i + 1]


def brute_force_sum(model: nn.Module, x, y, factors) -> list[torch.Tensor]:
    """sum_i factor(||g_i||) g_i, each g_i from its own backward pass (the reference every
    engine test compares with)."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(y)):
        grads = torch.autograd.grad(F.cross_entropy(model(one(x, i)), y[i : i + 1]), params)
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).float()
        factor = factors(norm.reshape(1))[0]
        for t, g in zip(total, grads):
            t += factor * g
    return total


def brute_force_per_layer_sum(model: nn.Module, x, y, clip: float) -> list[torch.Tensor]:
    """Each parameter tensor of each example clipped to C / sqrt(P) on its own."""
    params = [p for p in model.parameters() if p.requires_grad]
    threshold = clip / len(params) ** 0.5
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(y)):
        grads = torch.autograd.grad(F.cross_entropy(model(one(x, i)), y[i : i + 1]), params)
        for t, g in zip(total, grads):
            t += min(1.0, threshold / (g.norm().item() + 1e-6)) * g
    return total


def losses(model: nn.Module, x, y) -> dict[str, torch.Tensor]:
    return {"example_losses": F.cross_entropy(model(x), y, reduction="none")}


def engine_sum(
    model: nn.Module, x, y, engine: str, factors, chunks: int = 1, per_layer: bool = False
):
    """The engine's clipped sum over ``chunks`` physical batches (inputs: tensor or dict)."""
    module = LossModule(model, lambda m, batch: losses(m, *batch)["example_losses"])
    eng = make_engine(engine, module, factors, per_layer)
    try:
        for xs, ys in split_batch((x, y), -(-len(y) // chunks)):
            eng.run(partial(losses, model, xs, ys), (xs, ys))
        return eng.take_sums(), eng
    finally:
        eng.close()


def assert_sums_close(got, want) -> None:
    """1e-5 relative to the largest gradient entry (a conv bias before GroupNorm has gradient
    ~1e-9, rounding noise, which no relative test per tensor can compare)."""
    scale = max(w.abs().max() for w in want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g / scale, w / scale, rtol=1e-5, atol=1e-5)
