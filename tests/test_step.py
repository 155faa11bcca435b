"""The DP step's stages and its one extension point (``dpresearch.privacy.step``)."""

from __future__ import annotations

import torch
from torch import nn

from dpresearch.privacy.step import StepHook
from tests.conftest import dp_strategy, fit_batches


class Recorder(StepHook):
    """Sees each step's clipped sum (before noise) and what the step releases."""

    def __init__(self):
        self.clipped, self.released, self.strategy = [], [], None

    def setup(self, strategy) -> None:
        self.strategy = strategy

    def on_clipped_sum(self, sums):
        self.clipped.append([s.clone() for s in sums])

    def on_release(self, sums):
        self.released.append([s.clone() for s in sums])


def _train(hook: StepHook, noise: float):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    x, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    strategy = dp_strategy(noise, 0.5, expected_batch_size=4, max_physical=3, engine="bk")
    strategy.attach_step_hook(hook)
    fit_batches(model, x, y, [[0, 1, 2, 3], [4, 5, 6, 7, 8], [9, 10]], strategy)
    return strategy


def test_a_step_hook_sees_every_stage_in_order() -> None:
    hook = Recorder()
    strategy = _train(hook, noise=1.0)
    assert hook.strategy is strategy and len(hook.clipped) == len(hook.released) == 3
    for clipped, released in zip(hook.clipped, hook.released):
        # every example's contribution has norm <= C: the sum has norm <= C * batch size
        assert torch.cat([c.flatten() for c in clipped]).norm() <= 0.5 * 5 + 1e-6
        noise = torch.cat([(r - c).flatten() for r, c in zip(released, clipped)])
        assert noise.std() > 0.2  # sigma * C = 0.5 on every coordinate


def test_noise_factor_scales_the_noise_and_nothing_else() -> None:
    class Silent(Recorder):
        noise_factor = 0.0

    hook = Silent()
    _train(hook, noise=1.0)
    for clipped, released in zip(hook.clipped, hook.released):
        for c, r in zip(clipped, released):
            torch.testing.assert_close(c, r)
