"""Refuse models that DP training cannot handle, before any training, saying what to do."""

from __future__ import annotations

from torch import nn

from dpresearch.privacy.spec import PrivacyConfigError

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def check_model(model: nn.Module, supported: set[type], engine: str) -> None:
    for path, module in model.named_modules():
        if isinstance(module, _BATCH_NORMS):
            raise PrivacyConfigError(
                f"{path or 'model'} is {type(module).__name__}, which mixes the examples of a "
                "batch, so no per-example gradient (and no DP guarantee) exists; use GroupNorm "
                "instead: model.norm=group"
            )
    for path, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if own and type(module) not in supported:
            raise PrivacyConfigError(
                f"trainable layer {path or 'model'} ({type(module).__name__}) has no "
                f"per-example gradient rule in the {engine!r} engine; freeze it (finetune=...) "
                "or replace it with a supported layer"
            )
