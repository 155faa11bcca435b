"""The budget guard: a run with a target epsilon never takes a step beyond it.

A ``StepHook`` on the DP strategy. When training starts it finds the last step within the
target (a resumed run may already be there) and refuses, before any step, what would force
steps past it; after each step it stops training once the budget is spent; and before each
step it refuses one beyond it, the last line of defence against a loop setting that keeps
training after ``should_stop``.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl

from dpresearch.privacy.accounting import last_step_within
from dpresearch.privacy.spec import PrivacyConfigError
from dpresearch.privacy.step import StepHook

log = logging.getLogger(__name__)


def minimum_steps(trainer: pl.Trainer) -> int:
    """The optimizer steps Lightning runs whatever ``should_stop`` says (min_steps and
    min_epochs, counted from the start of the run, like the DP steps)."""
    min_steps = trainer.fit_loop.min_steps or 0
    min_epochs = trainer.fit_loop.min_epochs or 0
    per_epoch = trainer.num_training_batches
    if not isinstance(per_epoch, int):  # inf: an iterable without length
        per_epoch = 0
    return max(min_steps, min_epochs * per_epoch)


class BudgetGuard(StepHook):
    """Stops at the last step whose epsilon is within ``target_epsilon``."""

    def __init__(self, target_epsilon: float):
        self.target_epsilon = target_epsilon
        self.max_steps: int | None = None  # the last step within the budget, once training starts
        self.stopped = False  # training ended early because the budget was spent

    def before_training(self, strategy: Any) -> None:
        """Refused before any step: a resume whose target is below what was already spent,
        and Lightning minimums (min_epochs, min_steps) that would force steps past the budget
        (Lightning ignores should_stop until they are met)."""
        trainer = strategy.lightning_module.trainer
        self.max_steps = last_step_within(
            lambda steps: strategy.epsilon_after(steps).epsilon, self.target_epsilon,
            strategy.planned_steps,
        )  # fmt: skip
        spent = strategy.epsilon().epsilon
        if spent > self.target_epsilon:
            raise PrivacyConfigError(
                f"the checkpoint already spent epsilon {spent:.4f} ({strategy.dp_steps} steps), "
                f"more than this run's privacy.target_epsilon={self.target_epsilon}: resuming "
                f"cannot lower what was spent; resume with a target of at least {spent:.4f}"
            )
        forced = minimum_steps(trainer)
        if forced > self.max_steps:
            raise PrivacyConfigError(
                f"trainer.min_epochs/min_steps force {forced} steps, but the privacy budget "
                f"(target epsilon {self.target_epsilon}) allows {self.max_steps}: lower "
                "trainer.min_epochs / trainer.min_steps, or raise privacy.target_epsilon"
            )
        self.after_step(strategy)

    def before_step(self, strategy: Any) -> None:
        if self.max_steps is not None and strategy.dp_steps >= self.max_steps:
            raise RuntimeError(  # the last line of defence: before_training refuses settings
                f"refusing DP step {strategy.dp_steps + 1}: the budget allows {self.max_steps} "
                f"(target epsilon {self.target_epsilon}); a Lightning loop setting kept training"
            )

    def after_step(self, strategy: Any) -> None:
        if self.max_steps is None or strategy.dp_steps < self.max_steps:
            return
        trainer = strategy.lightning_module.trainer
        if strategy.dp_steps < trainer.estimated_stepping_batches:
            self.stopped = True
            log.warning(
                "privacy budget reached: %d DP steps give epsilon %.4f of the target %.4f; "
                "stopping before step %d of %d (the run is saved as it is)",
                strategy.dp_steps, strategy.epsilon().epsilon, self.target_epsilon,
                strategy.dp_steps + 1, int(trainer.estimated_stepping_batches),
            )  # fmt: skip
        trainer.should_stop = True
