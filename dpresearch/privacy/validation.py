"""Refuse models that DP training cannot handle, before any training, saying what to do; and
pick the engine when ``clipping.engine=auto``."""

from __future__ import annotations

import logging

from torch import nn

from dpresearch.privacy.engines import engines_supporting, unsupported_layers
from dpresearch.privacy.spec import PrivacyConfigError

log = logging.getLogger(__name__)

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _refuse_batch_norm(model: nn.Module) -> None:
    for path, module in model.named_modules():
        if isinstance(module, _BATCH_NORMS):
            raise PrivacyConfigError(
                f"{path or 'model'} is {type(module).__name__}, which mixes the examples of a "
                "batch, so no per-example gradient (and no DP guarantee) exists; use GroupNorm "
                "instead: model.norm=group"
            )


def resolve_engine(model: nn.Module, engine: str, per_layer: bool = False) -> str:
    """The engine that will train ``model``: ``engine`` itself after checking every trainable
    layer, or for ``auto`` the fastest engine that handles them all (bk, else hooks)."""
    _refuse_batch_norm(model)
    if per_layer and engine == "ghost":
        raise PrivacyConfigError(
            "clipping=per_layer needs one factor per parameter and example; the ghost engine's "
            "second backward pass applies one per example: use clipping.engine=bk or hooks"
        )
    if engine == "auto":
        for candidate in ("bk", "hooks"):
            missing = unsupported_layers(model, candidate)
            if not missing:
                log.info("clipping.engine=auto -> %s (handles every trainable layer)", candidate)
                return candidate
            path, module, reason = missing[0]
            log.info(
                "clipping.engine=auto: not %s, since %s (%s): %s",
                candidate, path, type(module).__name__, reason,
            )  # fmt: skip
        engine = "hooks"  # fall through to its refusal message
    missing = unsupported_layers(model, engine)
    if missing:
        path, module, reason = missing[0]
        others = engines_supporting(module)
        remedy = (
            f"use clipping.engine={others[0]} (engines that support it: {', '.join(others)})"
            if others
            else "no engine supports it: freeze it (finetune=...) or replace it"
        )
        raise PrivacyConfigError(
            f"trainable layer {path or 'model'} ({type(module).__name__}) is not supported by "
            f"the {engine!r} engine: {reason}; {remedy}"
        )
    return engine
