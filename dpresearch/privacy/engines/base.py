"""What every DP engine does: run one physical batch and add its clipped gradient sum.

An engine owns how per-example gradient norms and the clipped sum are computed (materialized
per-example gradients, two backward passes, or book-keeping); the strategy owns everything
around it (physical batches, noise once per logical step, accounting). The clipping function
(fixed, automatic, ...) is a parameter: ``factors(norms) -> per-example multipliers``, from
each example's total norm, or with ``per_layer`` from its (N, P) per-parameter norms.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from dpresearch.privacy.spec import PrivacyConfigError
from dpresearch.privacy.units import Units

Factors = Callable[[torch.Tensor], torch.Tensor]


def example_losses(output: Any) -> torch.Tensor:
    """The per-example losses a DP-trained LightningModule returns from ``training_step``."""
    if isinstance(output, dict) and isinstance(output.get("example_losses"), torch.Tensor):
        return output["example_losses"]
    raise PrivacyConfigError(
        "DP training needs each example's own loss: return {'loss': mean_loss, "
        "'example_losses': losses_with_reduction_none} from training_step "
        "(padding examples must have loss exactly 0)"
    )


def without_padding(layer: nn.Module, ids: torch.Tensor, backprops: torch.Tensor) -> torch.Tensor:
    """An embedding's output gradient with its ``padding_idx`` positions zeroed: autograd never
    updates the padding row, so no per-example gradient (or norm) may count it."""
    if getattr(layer, "padding_idx", None) is None:
        return backprops
    return backprops * (ids != layer.padding_idx).unsqueeze(-1).to(backprops.dtype)


HALF = (torch.float16, torch.bfloat16)
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
               "_forward_hooks_always_called")  # fmt: skip


def float32(t: Any) -> Any:
    """A half-precision tensor in float32 (others as they are). Under mixed precision
    (autocast) activations and output gradients come in bf16/fp16; per-example norms and the
    clipped sum are taken in float32 from the SAME tensors, so each example's contribution
    is bounded by C as exactly as in a float32 run."""
    return t.float() if isinstance(t, torch.Tensor) and t.dtype in HALF else t


class Engine:
    """Accumulates sum_i factor_i * g_i over the physical batches of one logical batch."""

    name = "base"

    def __init__(self, module: nn.Module, factors: Factors, per_layer: bool = False):
        self.module = module
        self.factors = factors
        self.per_layer = per_layer
        self.params = [p for p in module.parameters() if p.requires_grad]
        names = {id(p): n for n, p in module.named_parameters()}
        self.param_names = [names[id(p)] for p in self.params]
        self._sums: list[torch.Tensor] | None = None
        self.last_param_norms: torch.Tensor | None = None  # (N, P), last physical batch

    def run(self, forward: Callable[[], Any], batch: Any = None, units: Units | None = None) -> Any:
        """Forward one physical batch (``forward`` returns training_step's output on ``batch``),
        then add its clipped per-unit gradients to the running sum. Returns the forward's
        output. Engines that differentiate the loss themselves (vmap) read ``batch``.
        ``units``: rows that form one privacy unit, clipped once together (None: each row is
        a unit; see ``dpresearch.privacy.units``)."""
        raise NotImplementedError

    def _clip_factors(self, norms: torch.Tensor) -> torch.Tensor:
        """(N, P) per-example, per-parameter norms -> (N, P) factors: from each example's
        total norm (one factor per example), or per parameter under per-layer clipping."""
        norms = norms.detach()
        self.last_param_norms = norms  # read by the self-check
        if self.per_layer:
            return self.factors(norms)
        return self.factors(norms.norm(2, dim=1)).unsqueeze(1).expand_as(norms)

    def _add(self, grads: list[torch.Tensor]) -> None:
        if self._sums is None:
            self._sums = [g.detach().clone() for g in grads]
        else:
            for s, g in zip(self._sums, grads):
                s.add_(g)

    def take_sums(self) -> list[torch.Tensor]:
        """The clipped sum for each trainable parameter (zeros if no example was seen)."""
        sums = self._sums or [torch.zeros_like(p) for p in self.params]
        self._sums = None
        return [s.view_as(p) for s, p in zip(sums, self.params)]

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The module without any hook, for a computation on it that is not a training step
        (the audit's brute force under torch.func, which Opacus' full backward hooks break):
        every submodule's hooks are set aside and put back after."""
        kept = []
        for m in self.module.modules():
            saved = {name: getattr(m, name) for name in _HOOK_DICTS if hasattr(m, name)}
            for name, hooks in saved.items():
                setattr(m, name, type(hooks)())
            kept.append((m, saved))
        try:
            yield
        finally:
            for m, saved in kept:
                for name, hooks in saved.items():
                    setattr(m, name, hooks)

    def close(self) -> None:
        """Remove every hook; the module is left as it was found."""
