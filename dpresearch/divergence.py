"""Divergence: a run whose parameters (or, without privacy, loss) stop being finite ends as
``"status": "diverged"`` with the reason, instead of training on NaN to a "completed" run.

The parameters after a step are a function of what the step released (the noised gradient),
so checking them costs no privacy; a private run's loss is not read. A non-private run's loss
is checked too, so divergence is caught at the step where it starts.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch


class Diverged(RuntimeError):
    """Training produced non-finite numbers."""


class DivergenceGuard(pl.Callback):
    def __init__(self, private: bool) -> None:
        self.private = private

    @torch.no_grad()
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self.private:
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if isinstance(loss, torch.Tensor) and not math.isfinite(loss.detach().float().item()):
                raise Diverged(f"the training loss is {loss.item()} at step {step}: lower "
                               "optimizer.lr (or check the data)")  # fmt: skip
        params = [p for p in pl_module.parameters() if p.requires_grad]
        if not params:
            return
        finite = torch.stack([torch.isfinite(p).all() for p in params])
        if not bool(finite.all()):
            names = [n for (n, p), ok in zip(
                ((n, p) for n, p in pl_module.named_parameters() if p.requires_grad), finite)
                if not ok]  # fmt: skip
            raise Diverged(
                f"non-finite parameters after step {step} ({', '.join(names[:3])}"
                f"{', ...' if len(names) > 3 else ''}): lower optimizer.lr"
            )
