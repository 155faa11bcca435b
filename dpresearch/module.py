"""The classification LightningModule. It knows nothing about privacy: the same code trains
with and without DP, the strategy decides."""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F

from dpresearch.data.padding import PAD_LABEL
from dpresearch.frozen_base import restore_frozen, strip_frozen


def classification_losses(model: nn.Module, batch) -> torch.Tensor:
    """Per-example cross-entropy; padding examples (label PAD_LABEL) get loss exactly 0."""
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none", ignore_index=PAD_LABEL)


class ClassificationModule(pl.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        train_metrics: str | None = "train",
    ):
        """``train_metrics``: the name prefix of the metrics of training batches (loss,
        accuracy), or None not to log them (the run decides: they are exact functions of the
        private batches)."""
        super().__init__()
        self.train_metrics = train_metrics
        self.model = model
        self.optimizer_factory = optimizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _step(self, batch, stage: str | None) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = self(x)
        # Per-example losses: DP engines clip each example's own gradient. Padding examples
        # (label PAD_LABEL) get loss exactly 0 and are left out of every mean and count.
        losses = F.cross_entropy(logits, y, reduction="none", ignore_index=PAD_LABEL)
        real = y != PAD_LABEL
        n = int(real.sum())
        loss = losses.sum() / max(n, 1)
        if n and stage is not None:
            # sync_dist: under data parallelism each process saw its own shard of the epoch
            # (a no-op on one process). Evaluation splits are whole on every process.
            acc = (logits.argmax(-1) == y)[real].float().mean()
            epoch = {"on_step": False, "on_epoch": True, "batch_size": n, "sync_dist": True}
            self.log(f"{stage}_loss", loss, **epoch)
            self.log(f"{stage}_acc", acc, prog_bar=stage != "train", **epoch)
        return {"loss": loss, "example_losses": losses}

    def example_losses(self, batch) -> torch.Tensor:
        """The per-example losses as a pure function of the batch (no logging): what the
        vmap engine differentiates one example at a time."""
        return classification_losses(self.model, batch)

    def training_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._step(batch, self.train_metrics)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        strip_frozen(self, checkpoint)  # parameter-efficient runs: what was trained, only

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        restore_frozen(self, checkpoint)  # the base rebuilt from the config, verified

    def load_checkpoint_state(self, checkpoint: dict) -> None:
        """The weights of a checkpoint, outside a Trainer (evaluation)."""
        self.on_load_checkpoint(checkpoint)
        self.load_state_dict(checkpoint["state_dict"])

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return self.optimizer_factory(params)
