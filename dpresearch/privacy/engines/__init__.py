"""DP engines: how per-example norms and clipped gradient sums are computed.

``hooks`` (Opacus per-example gradients), ``ghost`` (Opacus fast gradient clipping, two
backward passes) and ``bk`` (book-keeping, ours, one backward pass). ``auto`` picks ``bk`` when
every trainable layer has a bk rule, else ``hooks``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from dpresearch.privacy.engines.base import Engine, Factors, example_losses
from dpresearch.privacy.engines.bk import BookKeepingEngine, trainable_layers
from dpresearch.privacy.engines.bk_rules import unsupported_reason as bk_unsupported
from dpresearch.privacy.engines.ghost import GhostEngine
from dpresearch.privacy.engines.hooks import HooksEngine, opacus_supported

ENGINES: dict[str, type[Engine]] = {
    "hooks": HooksEngine,
    "ghost": GhostEngine,
    "bk": BookKeepingEngine,
}
ENGINE_CHOICES = ("auto", *ENGINES)

_CHECKS: dict[str, Callable[[nn.Module], str | None]] = {
    "hooks": opacus_supported,
    "ghost": opacus_supported,
    "bk": bk_unsupported,
}


def unsupported_layers(model: nn.Module, engine: str) -> list[tuple[str, nn.Module, str]]:
    """(path, module, reason) for every trainable layer ``engine`` cannot handle."""
    check = _CHECKS[engine]
    return [
        (path, m, reason) for path, m in trainable_layers(model) if (reason := check(m)) is not None
    ]


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
    "unsupported_layers",
]
