"""One heatmap of a value over a grid of two parameters, for the sweep's figure and the report's."""

from __future__ import annotations

import math

from matplotlib.axes import Axes
from matplotlib.image import AxesImage


def draw_grid(
    ax: Axes,
    values: dict[tuple[float, float], float],
    fontsize: int = 8,
    counts: dict[tuple[float, float], int] | None = None,
) -> AxesImage:
    """Cells at each (x, y) of ``values`` (ticks: the distinct x and y, sorted), each labelled
    with its value (and ``counts``: the runs it averages); a missing combination is blank."""
    xs = sorted({x for x, _ in values})
    ys = sorted({y for _, y in values})
    matrix = [[values.get((x, y), math.nan) for x in xs] for y in ys]
    image = ax.imshow(matrix, origin="lower", cmap="viridis", aspect="auto")
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if math.isfinite(v):
                n = (counts or {}).get((xs[j], ys[i]))
                text = f"{v:.2f}" if n is None else f"{v:.2f}\nn={n}"
                ax.text(j, i, text, ha="center", va="center", color="w", fontsize=fontsize)
    ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
    ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
    return image
