"""Prune hopeless trials from inside training: report the monitored metric to the trial after
every validation and stop when the study's pruner says so (the run ends as "pruned")."""

from __future__ import annotations

import math

import optuna
import pytorch_lightning as pl

from dpresearch.sweeps.study import make_pruner, make_storage


class TrialPruning(pl.Callback):
    """``pruner`` is the sweep's pruner spec: pruners live in the sweeping process, not in the
    shared storage, so the trial's process rebuilds it."""

    def __init__(
        self,
        storage: str,
        study: str,
        trial_id: int,
        pruner: dict | None = None,
        monitor: str = "val_acc",
    ):
        loaded = optuna.load_study(
            study_name=study, storage=make_storage(storage), pruner=make_pruner(pruner)
        )
        self.trial = optuna.trial.Trial(loaded, trial_id)
        self.monitor = monitor
        self.pruned = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if not math.isfinite(value):
            return
        self.trial.report(value, step=trainer.current_epoch)
        if self.trial.should_prune():
            self.pruned = True
            trainer.should_stop = True
