"""One heatmap of a value over a grid of two parameters, for the sweep's figure and the report's."""

from __future__ import annotations

import math

from matplotlib.axes import Axes
from matplotlib.image import AxesImage


def draw_grid(ax: Axes, values: dict[tuple[float, float], float], fontsize: int = 8) -> AxesImage:
    """Cells at each (x, y) of ``values`` (ticks: the distinct x and y, sorted), each labelled
    with its value; a missing combination is left blank."""
    xs = sorted({x for x, _ in values})
    ys = sorted({y for _, y in values})
    matrix = [[values.get((x, y), math.nan) for x in xs] for y in ys]
    image = ax.imshow(matrix, origin="lower", cmap="viridis", aspect="auto")
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if math.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w", fontsize=fontsize)
    ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
    ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
    return image
