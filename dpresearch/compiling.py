"""``trainer.compile=true``: torch.compile the model, where that is known to work.

The bk engine's layer hooks run outside compiled graphs (``torch.compiler.disable``), so a
compiled model keeps one set of graphs as long as batch shapes stay fixed: Poisson batches
vary in size and recompile, ``sampler=poisson_masked`` pads them to static shapes. Opacus'
hooks (engines hooks and ghost) are not compiled-graph safe and are refused.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

STATIC_SAMPLERS = ("poisson_masked", "shuffle")


def compile_model(model: nn.Module, engine: str | None, sampler: str) -> nn.Module:
    """The compiled model; ``engine`` is None for non-private training."""
    if engine not in (None, "bk"):
        raise ValueError(
            f"trainer.compile=true works with clipping.engine=bk or privacy=none, not with "
            f"the {engine!r} engine (Opacus' hooks and torch.func's vmap are not compiled "
            "here); set "
            "clipping.engine=bk or trainer.compile=false"
        )
    if sampler not in STATIC_SAMPLERS:
        log.warning(
            "trainer.compile=true with sampler=%s: batch sizes vary, so torch.compile "
            "recompiles; use sampler=poisson_masked for static shapes",
            sampler,
        )
    return torch.compile(model)
