"""Logs the privacy spent so far at every epoch end, from whatever DP strategy trains.

The numbers are the same on every process; ``sync_dist`` only keeps Lightning's epoch-level
bookkeeping uniform across ranks."""

from __future__ import annotations

import hashlib

import pytorch_lightning as pl
import torch

from dpresearch.privacy.spec import PrivacyConfigError
from dpresearch.privacy.strategy import DPStepping


class PrivacyMetrics(pl.Callback):
    """Epsilon spent is logged beside validation accuracy at every evaluation (so dashboards
    can plot one against the other) and with the other privacy numbers at each epoch end."""

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        strategy = trainer.strategy
        if isinstance(strategy, DPStepping) and not trainer.sanity_checking:
            pl_module.log("epsilon", strategy.epsilon().epsilon, prog_bar=True, sync_dist=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        strategy = trainer.strategy
        if not isinstance(strategy, DPStepping):
            return
        eps = strategy.epsilon()
        pl_module.log("epsilon", eps.epsilon, prog_bar=True, sync_dist=True)
        pl_module.log("dp_steps", float(strategy.dp_steps), sync_dist=True)
        pl_module.log("noise_multiplier", strategy.noise_multiplier, sync_dist=True)
        pl_module.log("sample_rate", strategy.sample_rate, sync_dist=True)
        if strategy.adaptive is not None:  # post-processing of the noised counts: covered
            pl_module.log("clip_norm", strategy.clip_norm, sync_dist=True)


def dp_state_digest(state: dict) -> str:
    """sha256 over the DP state's fields (the noise generator's bytes included, and a
    correlated mechanism's noise history, tensor by tensor)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        if isinstance(value, torch.Tensor):
            value = value.cpu().numpy().tobytes().hex()
        elif isinstance(value, dict):  # the noise state: nested lists of tensors
            _digest_nested(digest, key, value)
            continue
        digest.update(f"{key}={value!r};".encode())
    return digest.hexdigest()


def _digest_nested(digest, key: str, value) -> None:
    if isinstance(value, torch.Tensor):
        digest.update(f"{key}:{tuple(value.shape)}:{value.dtype}=".encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    elif isinstance(value, dict):
        for k in sorted(value):
            _digest_nested(digest, f"{key}.{k}", value[k])
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _digest_nested(digest, f"{key}[{i}]", v)
    else:
        digest.update(f"{key}={value!r};".encode())


class PrivacyState(pl.Callback):
    """Carries the DP strategy's state in every checkpoint (steps spent, the mechanism, the
    noise stream) and gives it back on resume, so epsilon continues instead of restarting."""

    KEY = "dp_state"
    DIGEST = "dp_state_sha256"  # the DP state's own digest: the accountant's history is checked

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module, checkpoint: dict) -> None:
        if isinstance(trainer.strategy, DPStepping):
            state = trainer.strategy.dp_state_dict()
            checkpoint[self.KEY] = state
            checkpoint[self.DIGEST] = dp_state_digest(state)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module, checkpoint: dict) -> None:
        strategy = trainer.strategy
        if not isinstance(strategy, DPStepping):
            return
        if self.KEY not in checkpoint:
            raise PrivacyConfigError(
                "the checkpoint holds no DP state (it was saved by a non-private run): "
                "resuming it under DP would count its steps as free; start a new run"
            )
        digest = checkpoint.get(self.DIGEST)  # absent in checkpoints from before digests
        if digest is not None and digest != dp_state_digest(checkpoint[self.KEY]):
            raise PrivacyConfigError(
                "the checkpoint's DP state (steps spent, mechanism, noise stream) does not "
                "match its digest: it was altered after saving; resume from another checkpoint"
            )
        strategy.load_dp_state_dict(checkpoint[self.KEY])
