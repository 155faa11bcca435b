"""Logs the privacy spent so far at every epoch end, from whatever DP strategy trains.

The numbers are the same on every process; ``sync_dist`` only keeps Lightning's epoch-level
bookkeeping uniform across ranks."""

from __future__ import annotations

import pytorch_lightning as pl

from dpresearch.privacy.strategy import DPSGD


class PrivacyMetrics(pl.Callback):
    """Epsilon spent is logged beside validation accuracy at every evaluation (so dashboards
    can plot one against the other) and with the other privacy numbers at each epoch end."""

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        strategy = trainer.strategy
        if isinstance(strategy, DPSGD) and not trainer.sanity_checking:
            pl_module.log("epsilon", strategy.epsilon().epsilon, prog_bar=True, sync_dist=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        strategy = trainer.strategy
        if not isinstance(strategy, DPSGD):
            return
        eps = strategy.epsilon()
        pl_module.log("epsilon", eps.epsilon, prog_bar=True, sync_dist=True)
        pl_module.log("dp_steps", float(strategy.dp_steps), sync_dist=True)
        pl_module.log("noise_multiplier", strategy.noise_multiplier, sync_dist=True)
        pl_module.log("sample_rate", strategy.sample_rate, sync_dist=True)
