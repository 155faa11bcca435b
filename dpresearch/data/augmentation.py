"""Training-time augmentations of a batch on its device, and the K views of augmentation
multiplicity."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from dpresearch.privacy.units import UnitBatch


def random_shift(x: torch.Tensor, shift: int) -> torch.Tensor:
    """Each example translated by up to ``shift`` positions along each of its last one (a
    sequence, N x C x L) or two (an image, N x C x H x W) dimensions, edges replicated."""
    dims = x.dim() - 2
    if len(x) == 0 or shift == 0 or dims not in (1, 2):
        return x
    padded = F.pad(x, (shift, shift) * dims, mode="replicate")
    n, size = len(x), x.shape[2:]
    offsets = [torch.randint(0, 2 * shift + 1, (n,), device=x.device) for _ in range(dims)]
    batch = torch.arange(n, device=x.device).view(n, 1, *([1] * dims))
    chans = torch.arange(x.shape[1], device=x.device).view(1, -1, *([1] * dims))
    index = []
    for d, (o, length) in enumerate(zip(offsets, size)):
        view = [n, 1] + [1] * dims
        view[2 + d] = length
        index.append((o[:, None] + torch.arange(length, device=x.device)).view(view))
    return padded[(batch, chans, *index)]


def with_views(batch, views: int):
    """``views`` copies of every row of a training batch (x, y), or of a ``UnitBatch``'s,
    as one privacy unit per source row (or per user) with weights 1/views: the unit's
    gradient is the average over its views (augment them afterwards)."""
    plain, ids, weights = batch, None, None
    if isinstance(batch, UnitBatch):
        plain, ids, weights = batch.batch, batch.ids, batch.weights
    x, y = plain
    n = len(y)
    rows = torch.arange(n, device=y.device).repeat_interleave(views)
    x = {k: v[rows] for k, v in x.items()} if isinstance(x, dict) else x[rows]
    ids = (ids if ids is not None else torch.arange(n, device=y.device))[rows]
    base = weights if weights is not None else torch.ones(n, device=y.device)
    return UnitBatch((x, y[rows]), ids, base[rows] / views)
