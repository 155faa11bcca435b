"""DP engines: how per-example norms and clipped gradient sums are computed.

``hooks`` (Opacus per-example gradients), ``ghost`` (Opacus fast gradient clipping, two
backward passes), ``bk`` (book-keeping, ours, one backward pass) and ``vmap`` (torch.func,
exact on any model, no rules). Each engine's static check says which layers it has a rule for;
whether the rules are right for the user's model is proved by ``dpresearch.privacy.self_check``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from dpresearch.privacy.engines.base import Engine, Factors, example_losses
from dpresearch.privacy.engines.bk import BookKeepingEngine, trainable_layers
from dpresearch.privacy.engines.bk_rules import unsupported_reason as bk_unsupported
from dpresearch.privacy.engines.ghost import GhostEngine
from dpresearch.privacy.engines.hooks import HooksEngine, opacus_supported
from dpresearch.privacy.engines.vmap import VmapEngine
from dpresearch.privacy.spec import ENGINE_CHOICES

ENGINES: dict[str, type[Engine]] = {
    "hooks": HooksEngine,
    "ghost": GhostEngine,
    "bk": BookKeepingEngine,
    "vmap": VmapEngine,
}
if set(ENGINE_CHOICES) != {"auto", *ENGINES}:  # the config's choices are the engines
    raise ImportError(f"spec.ENGINE_CHOICES {ENGINE_CHOICES} != auto + {list(ENGINES)}")


def _rule_engines_check(module: nn.Module) -> str | None:
    """What no rule-based engine (hooks, ghost, bk) reads right, whatever the layer type."""
    if getattr(module, "batch_first", True) is False and type(module).__name__ != "SequenceBias":
        return ("it is sequence-first (batch_first=False) and the engine's rules read the "
                "batch as the first dimension")  # fmt: skip
    return None


def _opacus_layout(module: nn.Module) -> str | None:
    """Opacus reads SequenceBias batch first (our GradSampleModule is batch_first=True)."""
    if type(module).__name__ == "SequenceBias" and not module.batch_first:
        return ("it is sequence-first (batch_first=False) and Opacus' rule, as these engines "
                "run it, reads the batch as the first dimension")  # fmt: skip
    return _rule_engines_check(module)


def _vmap_supported(module: nn.Module) -> str | None:
    return None  # no rules: torch.func differentiates whatever the layer does


_CHECKS: dict[str, Callable[[nn.Module], str | None]] = {
    "hooks": lambda m: _opacus_layout(m) or opacus_supported(m),
    "ghost": lambda m: _opacus_layout(m) or opacus_supported(m),
    "bk": lambda m: _rule_engines_check(m) or bk_unsupported(m),
    "vmap": _vmap_supported,
}


def shared_parameters(model: nn.Module) -> list[str]:
    """Trainable parameters held by more than one layer (tied weights)."""
    holders: dict[int, list[str]] = {}
    for path, m in trainable_layers(model):
        for name, p in m.named_parameters(recurse=False):
            if p.requires_grad:
                holders.setdefault(id(p), []).append(f"{path}.{name}" if path else name)
    return [" = ".join(h) for h in holders.values() if len(h) > 1]


def unsupported_layers(model: nn.Module, engine: str) -> list[tuple[str, nn.Module, str]]:
    """(path, module, reason) for every trainable layer ``engine`` cannot handle."""
    check = _CHECKS[engine]
    missing = [
        (path, m, reason) for path, m in trainable_layers(model) if (reason := check(m)) is not None
    ]
    if engine == "ghost" and not missing and (tied := shared_parameters(model)):
        reason = f"Opacus' ghost clipping does not support tied weights ({tied[0]})"
        missing.append(("", model, reason))
    return missing


def engines_supporting(module: nn.Module) -> list[str]:
    return [name for name, check in _CHECKS.items() if check(module) is None]


def make_engine(name: str, module: nn.Module, factors: Factors, per_layer: bool = False) -> Engine:
    return ENGINES[name](module, factors, per_layer)


__all__ = [
    "ENGINES",
    "ENGINE_CHOICES",
    "Engine",
    "engines_supporting",
    "example_losses",
    "make_engine",
    "shared_parameters",
    "unsupported_layers",
]
