"""Privacy units: what one clipped contribution is made of.

By default each row of a batch is one unit (example-level DP). Two things make a unit span
several rows: user-level DP (``privacy.unit=user``: a sampled user's examples) and
augmentation multiplicity (``privacy.augmentations=K``: K augmented views of one example).
The unit's gradient is the weighted sum of its rows' gradients (weights 1 for a user's summed
gradient, 1/K for views averaged), and it is clipped to C ONCE, so one unit moves the clipped
sum by at most C whatever its size: the noise and the accountant are those of one unit per
Poisson draw.

A batch whose rows form units travels as ``UnitBatch``; its units are contiguous runs of
rows, and physical batches are cut only between units (a unit clipped in two parts would
contribute up to 2C).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dpresearch.privacy.batching import batch_size, take_rows


@dataclass
class Units:
    """Rows -> units of one physical batch. ``index[i]``: the unit of row i, in 0..count-1,
    non-decreasing; ``weights[i]``: row i's multiplier in its unit's gradient (None: all 1)."""

    index: torch.Tensor
    count: int
    weights: torch.Tensor | None = None

    @classmethod
    def from_ids(cls, ids: torch.Tensor, weights: torch.Tensor | None = None) -> Units:
        """Units from per-row labels (a user id, a source example) whose equal labels are
        adjacent; a label seen again after another one is refused (it would be two units)."""
        ids = torch.as_tensor(ids)
        if len(ids) == 0:
            return cls(torch.zeros(0, dtype=torch.long), 0, weights)
        starts = torch.ones(len(ids), dtype=torch.bool)
        starts[1:] = ids[1:] != ids[:-1]
        if int(starts.sum()) != len(torch.unique(ids)):
            raise ValueError("a unit's rows must be adjacent in the batch (sort rows by unit)")
        return cls(starts.cumsum(0) - 1, int(starts.sum()), weights)

    def rows_of(self, start: int, stop: int) -> Units:
        """The units of rows start..stop-1 (whole units), renumbered from 0."""
        index = self.index[start:stop]
        base = int(index[0]) if len(index) else 0
        weights = None if self.weights is None else self.weights[start:stop]
        return Units(index - base, int(index[-1]) - base + 1 if len(index) else 0, weights)

    def sizes(self) -> torch.Tensor:
        return torch.bincount(self.index, minlength=self.count)

    def group(self, per_row: torch.Tensor) -> torch.Tensor:
        """(n, ...) per-row gradients -> (count, ...) per-unit weighted sums."""
        rows = per_row
        if self.weights is not None:
            w = self.weights.to(per_row.device, per_row.dtype)
            rows = per_row * w.view(-1, *([1] * (per_row.dim() - 1)))
        out = torch.zeros(self.count, *per_row.shape[1:], device=rows.device, dtype=rows.dtype)
        return out.index_add_(0, self.index.to(rows.device), rows)

    def expand(self, per_unit: torch.Tensor) -> torch.Tensor:
        """(count, P) per-unit factors -> (n, P) per-row coefficients: the unit's factor times
        the row's weight, so sum_i c_i g_i is the sum of the clipped unit gradients."""
        rows = per_unit[self.index.to(per_unit.device)]
        if self.weights is None:
            return rows
        return rows * self.weights.to(rows.device, rows.dtype).unsqueeze(1)


@dataclass
class UnitBatch:
    """A training batch whose rows form privacy units: the batch the module sees, and the
    units the DP engine clips (the strategy hands the module ``batch`` alone)."""

    batch: Any
    ids: torch.Tensor  # (n,) unit label of each row, equal labels adjacent
    weights: torch.Tensor | None = None  # (n,) row multipliers; None: 1

    def units(self) -> Units:
        return Units.from_ids(self.ids, self.weights)


def unwrap(batch: Any) -> tuple[Any, Units | None]:
    """(the module's batch, its units or None for one unit per row)."""
    if isinstance(batch, UnitBatch):
        return batch.batch, batch.units()
    return batch, None


def split_units(batch: Any, units: Units | None, size: int) -> list[tuple[Any, Units | None]]:
    """Physical batches of at most ``size`` rows, cut only between units; a unit of more
    than ``size`` rows is a physical batch of its own (it cannot be split)."""
    n = batch_size(batch)
    if units is None:
        return [(take_rows(batch, s, min(s + size, n)), None) for s in range(0, max(n, 1), size)]
    if n == 0:
        return [(batch, units)]
    bounds = torch.cat([torch.tensor([0]), units.sizes().cumsum(0)]).tolist()
    out, start = [], 0
    for begin, end in zip(bounds[1:-1], bounds[2:]):  # each unit after the first
        if end - start > size and begin > start:  # it would overflow: cut before it
            out.append((take_rows(batch, start, begin), units.rows_of(start, begin)))
            start = begin
    out.append((take_rows(batch, start, n), units.rows_of(start, n)))
    return out


def real_units(units: Units, real_rows: torch.Tensor) -> int:
    """Units with at least one real (non-padding) row."""
    counts = torch.zeros(units.count, dtype=torch.long).index_add_(0, units.index, real_rows.long())
    return int((counts > 0).sum())
