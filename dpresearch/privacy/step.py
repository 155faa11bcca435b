"""One DP-SGD step as named stages, run by the training strategy (which the benchmark trains
through).

    accumulate     the engine over each physical batch: its clipped per-example sum
    clipped sum    the step's sum; hooks see it before noise (an audit's canaries join it)
    noise          the mechanism's noise (``noise`` group: N(0, (sigma*C)^2) each step, or
                   correlated across steps), once per step, on one process (rank 0) only
    reduce         one all-reduce across processes (the DDP strategy's; nothing on one)
    release        hooks see what the step releases: the noised, reduced sum
    scale          divided by the public expected batch size: the optimizer's gradient

Each stage is a function of what it needs, so the strategies (one device, DDP) and the next
noise mechanisms call the same code. ``StepHook`` is the one extension point: what observes or
changes a step implements some of its methods: the budget guard (``privacy.budget``) and
the audit's canaries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from dpresearch.privacy.engines import Engine
from dpresearch.privacy.units import Units


class StepHook:
    """Observes (or, in a deliberately broken audit run, alters) each DP step. Every method
    is a no-op by default; a hook overrides what it needs. The names differ from Lightning's
    Callback hooks, so one object may be both (the audit's canaries are)."""

    noise_factor = 1.0  # multiplies the noise std: 1, or 0 in a sabotaged audit run

    def on_engine(self, strategy: Any) -> None:
        """Once the strategy's engine exists, before the first step."""

    def before_training(self, strategy: Any) -> None:
        """When training starts (after a resume's DP state is loaded), before any step; may
        refuse the run by raising."""

    def before_step(self, strategy: Any) -> None:
        """Before each DP step's first physical batch; may refuse the step by raising."""

    def on_clipped_sum(self, sums: list[torch.Tensor]) -> None:
        """The step's clipped sum on this process, before noise (may add to it in place)."""

    def on_release(self, sums: list[torch.Tensor]) -> None:
        """The step's noised sum over all processes: what the step releases."""

    def after_step(self, strategy: Any) -> None:
        """After the step is counted (``strategy.dp_steps``); may stop training."""


def accumulate(
    engine: Engine, physical_steps: Iterable[tuple[Any, Callable[[], Any], Units | None]]
) -> Any:
    """Run every physical batch (and its privacy units) through the engine (an empty Poisson
    batch comes as one padding row: a zero contribution, and the noise still follows);
    return the last training_step output."""
    output = None
    for chunk, step, units in physical_steps:
        output = engine.run(step, chunk, units)
    return output


def clipped_sum(engine: Engine, hooks: Sequence[StepHook]) -> list[torch.Tensor]:
    sums = engine.take_sums()
    for hook in hooks:
        hook.on_clipped_sum(sums)
    return sums


def noised(
    sums: list[torch.Tensor], std: float, stream: Any, generator: torch.Generator | None,
    hooks: Sequence[StepHook] = (),
) -> list[torch.Tensor]:  # fmt: skip
    """``sums`` plus the mechanism's noise for this step (``stream``: independent N(0, std^2)
    per coordinate, or correlated across steps), drawn from ``generator`` (None: the secure
    source)."""
    for hook in hooks:
        std *= hook.noise_factor
    return stream.noised(sums, std, generator)


def release(sums: list[torch.Tensor], hooks: Sequence[StepHook]) -> None:
    for hook in hooks:
        hook.on_release(sums)


def gradients(sums: list[torch.Tensor], expected_batch_size: int) -> list[torch.Tensor]:
    """The optimizer's gradient: the noised sum over the PUBLIC expected batch size (the
    realised Poisson batch size is private)."""
    return [s / expected_batch_size for s in sums]
