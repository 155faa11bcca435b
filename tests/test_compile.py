"""trainer.compile=true: static (masked Poisson) shapes compile once; Opacus engines refused."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters
from torch.nn import functional as F

from dpresearch.compiling import compile_model
from dpresearch.data.padding import PAD_LABEL
from dpresearch.privacy.engines import make_engine
from dpresearch.privacy.spec import FixedClipping
from tests.helpers.models import data, group_norm_cnn


def graphs_after_steps(real_sizes: list[int], pad_to: int | None) -> list[int]:
    """Compiled-graph count after each bk step; batches padded to ``pad_to`` if given."""
    torch._dynamo.reset()
    counters.clear()
    model = group_norm_cnn()
    compiled = compile_model(model, "bk", "poisson_masked")
    engine = make_engine("bk", model, FixedClipping().factors)
    x, y = data("cnn", 16)
    counts = []
    try:
        for n in real_sizes:
            xs, ys = x[: pad_to or n].clone(), y[: pad_to or n].clone()
            ys[n:] = PAD_LABEL
            engine.run(lambda xs=xs, ys=ys: {
                "example_losses": F.cross_entropy(compiled(xs), ys, reduction="none",
                                                  ignore_index=PAD_LABEL)})  # fmt: skip
            engine.take_sums()
            counts.append(counters["stats"]["unique_graphs"])
    finally:
        engine.close()
    return counts


def test_static_masked_batches_never_recompile_while_varying_sizes_do() -> None:
    padded = graphs_after_steps([5, 9, 3, 12], pad_to=16)
    assert padded[0] > 0 and padded == [padded[0]] * 4
    varying = graphs_after_steps([5, 9, 3, 12], pad_to=None)
    assert varying[-1] > varying[0]  # the guard: without padding, shapes change and recompile


@pytest.mark.parametrize("engine", ["hooks", "ghost"])
def test_compile_is_refused_for_opacus_engines(engine: str) -> None:
    with pytest.raises(ValueError, match="clipping.engine=bk"):
        compile_model(group_norm_cnn(), engine, "poisson_masked")
