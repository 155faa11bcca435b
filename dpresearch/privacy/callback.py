"""Logs the privacy spent so far at every epoch end, from whatever DP strategy trains."""

from __future__ import annotations

import pytorch_lightning as pl

from dpresearch.privacy.strategy import DPStrategy


class PrivacyMetrics(pl.Callback):
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        strategy = trainer.strategy
        if not isinstance(strategy, DPStrategy):
            return
        eps = strategy.epsilon()
        pl_module.log("epsilon", eps.epsilon, prog_bar=True)
        pl_module.log("dp_steps", float(strategy.dp_steps))
        pl_module.log("noise_multiplier", strategy.noise_multiplier)
        pl_module.log("sample_rate", strategy.sample_rate)
