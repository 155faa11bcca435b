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
