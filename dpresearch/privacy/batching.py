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


def take_rows(batch: Any, start: int, stop: int) -> Any:
    """Rows start..stop-1 of every tensor of a (nested) batch."""
    if isinstance(batch, torch.Tensor):
        return batch[start:stop]
    if isinstance(batch, dict):
        return {k: take_rows(v, start, stop) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(take_rows(v, start, stop) for v in batch)
    return batch


def split_batch(batch: Any, size: int) -> list[Any]:
    """Split every tensor of a (nested) batch along dim 0 into chunks of at most ``size``."""
    n = batch_size(batch)
    return [take_rows(batch, s, s + size) for s in range(0, max(n, 1), size)]
