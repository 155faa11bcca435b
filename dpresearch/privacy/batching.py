"""Batches as nested tensors: their size, and physical batches cut from a logical one."""

from __future__ import annotations

from typing import Any

import torch


def batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return len(batch)
    if isinstance(batch, dict):
        return batch_size(next(iter(batch.values())))
    return batch_size(batch[0])


def split_batch(batch: Any, size: int) -> list[Any]:
    """Split every tensor of a (nested) batch along dim 0 into chunks of at most ``size``."""
    n = batch_size(batch)
    starts = range(0, max(n, 1), size)

    def take(obj: Any, start: int) -> Any:
        if isinstance(obj, torch.Tensor):
            return obj[start : start + size]
        if isinstance(obj, dict):
            return {k: take(v, start) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(take(v, start) for v in obj)
        return obj

    return [take(batch, s) for s in starts]
