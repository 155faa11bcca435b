"""Refuse models that DP training cannot handle, before any training, saying what to do; and
choose the engine: the one asked for, or for ``clipping.engine=auto`` the fastest that passes
the self-check on this model (bk, then hooks, then the rule-free vmap)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from torch import nn

from dpresearch.privacy.engines import engines_supporting, unsupported_layers
from dpresearch.privacy.engines.ghost import PER_LAYER_REFUSAL
from dpresearch.privacy.self_check import CheckResult
from dpresearch.privacy.spec import PrivacyConfigError

log = logging.getLogger(__name__)

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
AUTO_ORDER = ("bk", "hooks", "vmap")  # fastest first; ghost is never chosen for the user
Check = Callable[[str], CheckResult]


def _refuse_never_private(model: nn.Module) -> None:
    """Layers no engine may train: they mix the examples of a batch, or change their own
    weights from the batch outside the mechanism."""
    for path, module in model.named_modules():
        if isinstance(module, _BATCH_NORMS):
            raise PrivacyConfigError(
                f"{path or 'model'} is {type(module).__name__}, which mixes the examples of a "
                "batch, so no per-example gradient (and no DP guarantee) exists; use GroupNorm "
                "instead: model.norm=group"
            )
        if (isinstance(module, nn.modules.instancenorm._InstanceNorm)
                and module.track_running_stats):  # fmt: skip
            raise PrivacyConfigError(
                f"{path or 'model'} is {type(module).__name__}(track_running_stats=True): its "
                "running statistics are averages of the private batches, updated and saved "
                "outside the DP mechanism; set track_running_stats=False"
            )
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and module.max_norm is not None:
            raise PrivacyConfigError(
                f"{path or 'model'} is {type(module).__name__}(max_norm={module.max_norm}), which "
                "rescales the weight rows a batch looks up in place, in the forward pass: a "
                "change to the model that depends on which ids the private batch holds, outside "
                "the DP mechanism; set max_norm=None"
            )


def _static_refusal(model: nn.Module, engine: str) -> str | None:
    """Why ``engine`` has no rule for some trainable layer of ``model``; None if it has."""
    missing = unsupported_layers(model, engine)
    if not missing:
        return None
    path, module, reason = missing[0]
    others = [e for e in engines_supporting(module) if e != engine]
    remedy = (
        f"use clipping.engine={others[0]} (engines with a rule for it: {', '.join(others)})"
        if others
        else "no engine supports it: freeze it (finetune=...) or replace it"
    )
    return (
        f"trainable layer {path or 'model'} ({type(module).__name__}) is not supported by the "
        f"{engine!r} engine: {reason}; {remedy}"
    )


def select_engine(
    model: nn.Module, engine: str, per_layer: bool = False, check: Check | None = None
) -> tuple[str, dict[str, CheckResult]]:
    """The engine that will train ``model`` and the self-check results that chose it.

    An engine asked for by name must have a rule for every trainable layer and, with
    ``check``, pass the self-check; otherwise the refusal names what failed and the engines
    that pass. ``auto`` takes the first of bk, hooks, vmap that does both; without ``check``
    (clipping.self_check=false) it goes by the static rules alone."""
    _refuse_never_private(model)
    if per_layer and engine == "ghost":
        raise PrivacyConfigError(PER_LAYER_REFUSAL)
    results: dict[str, CheckResult] = {}

    def passes(name: str) -> bool:
        if name not in results:
            results[name] = check(name)
            r = results[name]
            log.info("self-check of the %s engine: %s in %.2f s", name,
                     "passed" if r.passed else "FAILED, " + r.reason(), r.seconds)  # fmt: skip
        return results[name].passed

    if engine == "auto":
        refusals: dict[str, str] = {}
        for candidate in AUTO_ORDER:
            refusal = _static_refusal(model, candidate)
            if refusal is not None:
                log.info("clipping.engine=auto: not %s: %s", candidate, refusal)
                refusals[candidate] = refusal
                continue
            if check is None or passes(candidate):
                how = "passed the self-check" if check else "has a rule for every layer"
                log.info("clipping.engine=auto -> %s (%s)", candidate, how)
                if candidate == "vmap":
                    log.warning("clipping.engine=auto falls back to the vmap engine: exact "
                                "on any model, but slower than bk or hooks")  # fmt: skip
                return candidate, results
        failures = {**refusals, **{name: r.reason() for name, r in results.items()}}
        raise PrivacyConfigError(
            "no engine computes exact per-example gradients for this model: "
            + "; ".join(f"{name}: {why}" for name, why in failures.items())
            + ". Freeze or replace the layers named, or make the model free of layers that "
            "mix the examples of a batch"
        )
    refusal = _static_refusal(model, engine)
    if refusal is not None:
        raise PrivacyConfigError(refusal)
    if check is not None and not passes(engine):
        ok = [e for e in AUTO_ORDER + ("ghost",)
              if e != engine and not (per_layer and e == "ghost")
              and _static_refusal(model, e) is None and passes(e)]  # fmt: skip
        remedy = (f"engines that pass the same check: {', '.join(ok)}; set clipping.engine="
                  f"{ok[0]}" if ok else "no engine passes it")  # fmt: skip
        raise PrivacyConfigError(
            f"the {engine!r} engine's per-example gradients are wrong for this model (the "
            f"self-check against a brute-force loop over single synthetic examples: "
            f"{results[engine].reason()}); training would void the clipping bound and the "
            f"epsilon. {remedy}"
        )
    return engine, results


def resolve_engine(
    model: nn.Module, engine: str, per_layer: bool = False, check: Check | None = None
) -> str:
    """``select_engine``'s engine alone."""
    return select_engine(model, engine, per_layer, check)[0]
