"""Padding examples, which make Poisson batches static in shape (``sampler=poisson_masked``).

A padding example has index ``PAD_INDEX`` in the batch sampler's output and label
``PAD_LABEL`` in the batch; the loss ignores it (cross-entropy's ``ignore_index``), so its
gradient, norm and count are exactly zero.
"""

from __future__ import annotations

from typing import Any

import torch

PAD_INDEX = -1
PAD_LABEL = -100  # torch's default ignore_index


def labels(batch: Any) -> torch.Tensor:
    if isinstance(batch, dict):
        return batch["labels"]
    return batch[1]


def count_real(batch: Any) -> int:
    """Examples in a batch that are not padding."""
    return int((labels(batch) != PAD_LABEL).sum())


def _zero_row(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.new_zeros((1, *obj.shape[1:]))
    if isinstance(obj, dict):
        return {k: _zero_row(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_zero_row(v) for v in obj)
    return obj


def padding_like(batch: Any) -> Any:
    """One padding example shaped like ``batch``'s rows, of which there may be none: an empty
    Poisson batch runs its forward on it, since some models cannot run on zero rows (Hugging
    Face attention reshapes fail). Zero inputs and label PAD_LABEL: loss, gradient and norm
    are exactly 0, so the step is the same pure-noise step."""
    out = _zero_row(batch)
    labels(out).fill_(PAD_LABEL)
    return out
