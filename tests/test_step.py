"""The DP step's stages and its one extension point (``dpresearch.privacy.step``)."""

from __future__ import annotations

import torch
from torch import nn

from dpresearch.privacy.budget import BudgetGuard
from dpresearch.privacy.step import StepHook
from dpresearch.privacy.strategy import DPStrategy
from tests.conftest import dp_strategy, fit_batches


class Recorder(StepHook):
    """Sees each step's clipped sum (before noise) and what the step releases."""

    def __init__(self):
        self.clipped, self.released, self.strategy = [], [], None

    def on_engine(self, strategy) -> None:
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


def test_budget_guard_is_a_step_hook_and_hooks_run_around_each_step() -> None:
    calls = []

    class Order(StepHook):
        def before_training(self, strategy):
            calls.append("start")

        def before_step(self, strategy):
            calls.append(f"before {strategy.dp_steps}")

        def on_clipped_sum(self, sums):
            calls.append("sum")

        def on_release(self, sums):
            calls.append("release")

        def after_step(self, strategy):
            calls.append(f"after {strategy.dp_steps}")

    strategy = _train(Order(), noise=1.0)
    assert calls[:6] == ["start", "before 0", "sum", "release", "after 1", "before 1"]
    assert calls.count("release") == 3 and calls[-1] == "after 3"
    assert strategy.budget is None and not strategy.stopped_by_budget  # sigma given, no target
    guarded = DPStrategy(noise_multiplier=1.0, max_grad_norm=0.5, expected_batch_size=4,
                         sample_rate=0.1, delta=1e-5, accountant="rdp",
                         max_physical_batch_size=4, noise_seed=0, target_epsilon=3.0)  # fmt: skip
    assert isinstance(guarded.budget, BudgetGuard) and guarded.budget in guarded.step_hooks
