"""Lightning strategies that own the DP wiring, so the LightningModule stays privacy-agnostic.

One Lightning batch is one *logical* batch (one optimizer step; for Poisson sampling its size
varies). The strategy splits it into physical batches of at most ``max_physical_batch_size``
so memory is bounded whatever the sampling rate, and accumulates before the single step:

- ``PhysicalBatchStrategy`` (non-private): plain gradient accumulation, averaged over the
  logical batch.
- ``DPStrategy``: Opacus hooks give per-example gradients; each physical batch is clipped and
  summed into the DP optimizer's running sum; after the last one, Gaussian noise of std
  sigma*C is added once and the sum divided by the expected batch size. Each DP step is counted
  once for the accountant.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from opacus.optimizers import DPOptimizer
from pytorch_lightning.strategies import SingleDeviceStrategy
from pytorch_lightning.trainer.states import TrainerFn

from dpresearch.privacy.accounting import EpsilonResult, compute_epsilon
from dpresearch.privacy.engines import hooks
from dpresearch.privacy.optimizer import ClippingDPOptimizer
from dpresearch.privacy.spec import FixedClipping


def batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return len(batch)
    if isinstance(batch, dict):
        return batch_size(next(iter(batch.values())))
    return batch_size(batch[0])


def split_batch(batch: Any, size: int) -> list[Any]:
    """Split every tensor of a (nested) batch along dim 0 into chunks of at most ``size``."""
    n = batch_size(batch)
    starts = range(0, max(n, 1), size)

    def take(obj: Any, start: int) -> Any:
        if isinstance(obj, torch.Tensor):
            return obj[start : start + size]
        if isinstance(obj, dict):
            return {k: take(v, start) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(take(v, start) for v in obj)
        return obj

    return [take(batch, s) for s in starts]


class PhysicalBatchStrategy(SingleDeviceStrategy):
    """Single-device training where a logical batch may span several physical batches."""

    def __init__(self, max_physical_batch_size: int, device: str | torch.device = "cpu"):
        super().__init__(device=torch.device(device))
        self.max_physical_batch_size = max_physical_batch_size
        self._stash: list[torch.Tensor | None] | None = None

    def setup(self, trainer: pl.Trainer) -> None:
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(
                "trainer.accumulate_grad_batches must be 1: one Lightning batch is already a "
                "whole logical batch; bound memory with sampler.max_physical_batch_size"
            )
        super().setup(trainer)

    def _params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.lightning_module.parameters() if p.requires_grad]

    def training_step(self, *args: Any, **kwargs: Any):
        batch, rest = args[0], args[1:]
        chunks = split_batch(batch, self.max_physical_batch_size)
        n = batch_size(batch)
        for opt in self.optimizers:
            opt.zero_grad()
        for chunk in chunks[:-1]:
            loss = super().training_step(chunk, *rest, **kwargs)
            (loss * (batch_size(chunk) / n)).backward()
        if len(chunks) > 1:
            # Lightning zeroes grads between this step and its backward: keep ours aside.
            self._stash = [p.grad.clone() if p.grad is not None else None for p in self._params()]
        loss = super().training_step(chunks[-1], *rest, **kwargs)
        return loss * (batch_size(chunks[-1]) / max(n, 1))

    def backward(self, closure_loss: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = super().backward(closure_loss, *args, **kwargs)
        if self._stash is not None:
            for p, g in zip(self._params(), self._stash):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad + g
            self._stash = None
        return out


class DPStrategy(PhysicalBatchStrategy):
    """DP-SGD with Opacus per-example gradients, noise once per logical step, and accounting."""

    def __init__(
        self,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        sample_rate: float,
        delta: float,
        accountant: str,
        max_physical_batch_size: int,
        noise_seed: int,
        device: str | torch.device = "cpu",
        factors: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        super().__init__(max_physical_batch_size, device)
        self.factors = factors or FixedClipping(max_grad_norm).factors
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.expected_batch_size = expected_batch_size
        self.sample_rate = sample_rate
        self.delta = delta
        self.accountant = accountant
        self.noise_seed = noise_seed
        self.dp_steps = 0
        self._grad_sample_module = None
        self._epsilon_cache: tuple[int, EpsilonResult] | None = None

    def setup(self, trainer: pl.Trainer) -> None:
        super().setup(trainer)
        if trainer.state.fn != TrainerFn.FITTING:
            return  # evaluation needs no per-example gradients
        if len(self.optimizers) != 1:
            raise ValueError(f"DP training needs exactly one optimizer, got {len(self.optimizers)}")
        self._grad_sample_module = hooks.attach(self.lightning_module)
        generator = torch.Generator(device=self.root_device).manual_seed(self.noise_seed)
        dp_optimizer = ClippingDPOptimizer(
            self.optimizers[0],
            factors=self.factors,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=self.expected_batch_size,
            loss_reduction="mean",
            generator=generator,
        )
        dp_optimizer.attach_step_hook(self._count_step)
        # Schedulers keep working: they hold the inner optimizer, whose param_groups DPOptimizer
        # shares.
        self.optimizers = [dp_optimizer]

    def _count_step(self, optimizer: DPOptimizer) -> None:
        self.dp_steps += 1

    def training_step(self, *args: Any, **kwargs: Any):
        batch, rest = args[0], args[1:]
        opt: DPOptimizer = self.optimizers[0]
        chunks = split_batch(batch, self.max_physical_batch_size)
        opt.zero_grad()
        for chunk in chunks[:-1]:
            loss = SingleDeviceStrategy.training_step(self, chunk, *rest, **kwargs)
            loss.backward()
            opt.signal_skip_step(do_skip=True)
            opt.pre_step()  # clips this physical batch into the running sum; no step
            opt.zero_grad()  # drops per-example gradients, keeps the running sum
        return SingleDeviceStrategy.training_step(self, chunks[-1], *rest, **kwargs)

    def backward(self, closure_loss: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return SingleDeviceStrategy.backward(self, closure_loss, *args, **kwargs)

    def epsilon(self) -> EpsilonResult:
        """Epsilon spent so far (cached per step count)."""
        if self._epsilon_cache is None or self._epsilon_cache[0] != self.dp_steps:
            result = compute_epsilon(
                self.sample_rate, self.noise_multiplier, self.dp_steps, self.delta, self.accountant
            )
            self._epsilon_cache = (self.dp_steps, result)
        return self._epsilon_cache[1]

    def teardown(self) -> None:
        if self._grad_sample_module is not None:
            self._grad_sample_module.remove_hooks()  # leave the user's module as we found it
            self._grad_sample_module = None
        super().teardown()
