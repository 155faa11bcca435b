"""Bugs injected on purpose (``audit.sabotage=NAME``, test and study only): each is a mistake
found in real DP training code, so that the audit and the conformance checks can be shown to
catch it. A sabotaged run still reports the epsilon its configuration claims.

The injection happens through the run's callbacks (after the engine's self-check), except
``shuffle``, which swaps the data module's batch sampler before the first batch.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from dpresearch.data.samplers import ShuffleSampling
from dpresearch.privacy.step import StepHook
from dpresearch.privacy.units import unwrap

BUGS = {
    "none": "nothing injected",
    "noise": "no noise is added; the accountant counts sigma",
    "clipping": "no example is clipped (gradient canaries: 50 C each)",
    "noise_per_rank": "every process adds noise of std sigma C / W to its own sum (the "
    "averaging mistake): the reduced sum carries sigma C / sqrt(W)",
    "clipping_layer": "the largest parameter's per-example gradients are not clipped",
    "norm_layer": "each example's norm is taken from its smallest parameter's gradient only",
    "shuffle": "batches are shuffled fixed-size ones while the accountant assumes Poisson",
    "realized_batch": "the noised sum is divided by the realized batch size, not the expected",
    "frozen_noise": "a frozen parameter receives noise each step",
    "frozen_grad": "a frozen parameter receives its plain (unclipped, noiseless) gradient",
    "resume_accountant": "a resumed run's accountant restarts at step 0",
}


class InjectedBug(StepHook, pl.Callback):
    """One of ``BUGS``, wired into the run it is a callback of."""

    def __init__(self, bug: str):
        if bug not in BUGS:
            raise ValueError(f"audit.sabotage={bug!r} is not one of {list(BUGS)}")
        self.bug = bug
        self.noise_factor = 0.0 if bug == "noise" else 1.0

    def on_train_set(self, datamodule) -> None:
        if self.bug == "shuffle":
            poisson = datamodule.sampler
            shuffled = ShuffleSampling(poisson.expected_batch_size,
                                       poisson.max_physical_batch_size)  # fmt: skip
            object.__setattr__(poisson, "build", shuffled.build)  # the accountant keeps q

    def on_engine(self, strategy) -> None:
        self.strategy = strategy
        engine = strategy.engine
        sizes = [p.numel() for p in engine.params]
        if self.bug == "clipping":
            engine.factors = torch.ones_like
        elif self.bug in ("clipping_layer", "norm_layer"):
            if engine.name == "ghost":
                raise ValueError(
                    f"audit.sabotage={self.bug} needs per-parameter factors; the ghost engine "
                    "has one per example: pick another engine"
                )
            target = sizes.index(max(sizes) if self.bug == "clipping_layer" else min(sizes))
            original = engine._clip_factors

            def broken(norms: torch.Tensor) -> torch.Tensor:
                if self.bug == "clipping_layer":
                    factors = original(norms).clone()
                    factors[:, target] = 1.0
                    return factors
                engine.last_param_norms = norms.detach()
                return engine.factors(norms[:, target].detach()).unsqueeze(1).expand_as(norms)

            engine._clip_factors = broken
        elif self.bug == "noise_per_rank":
            self.world = strategy.world_size
            self.noise_factor = 1.0 / self.world  # rank 0's own draw, in the strategy
            self.generator = torch.Generator().manual_seed(1000 + strategy.global_rank)
        elif self.bug in ("frozen_noise", "frozen_grad"):
            trained = {id(p) for p in engine.params}
            frozen = [p for p in strategy.lightning_module.parameters() if id(p) not in trained]
            if not frozen:
                raise ValueError(
                    f"audit.sabotage={self.bug} needs a frozen parameter: train a part of the "
                    "model (finetune=bias_only, head_only, ...)"
                )
            self.frozen = frozen[0]
            if self.bug == "frozen_grad":  # trainable to autograd and the optimizer, not to DP
                self.frozen.requires_grad_(True)
                strategy.optimizers[0].param_groups[0]["params"].append(self.frozen)

    def before_training(self, strategy) -> None:
        if self.bug == "resume_accountant" and strategy.resumed_steps:
            strategy.dp_steps = 0
            strategy._epsilon_cache = None

    def on_clipped_sum(self, sums: list[torch.Tensor]) -> None:
        if self.bug == "noise_per_rank" and self.strategy.global_rank != 0:
            std = self.strategy.gradient_noise_multiplier * self.strategy.clip_norm / self.world
            for s in sums:
                s.add_(torch.randn(s.shape, generator=self.generator).to(s) * std)

    def on_release(self, sums: list[torch.Tensor]) -> None:
        s = self.strategy
        if self.bug == "realized_batch":
            for t in sums:
                t.mul_(s.expected_batch_size / max(s.step_examples, 1))
        elif self.bug == "frozen_noise":
            std = s.gradient_noise_multiplier * s.clip_norm / s.expected_batch_size
            with torch.no_grad():
                self.frozen.add_(torch.randn_like(self.frozen) * std * 0.01)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.batch = batch

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.bug == "frozen_grad":  # the plain gradient of the batch's summed loss
            losses = pl_module.example_losses(unwrap(self.batch)[0])
            (self.frozen.grad,) = torch.autograd.grad(losses.sum(), [self.frozen])

    def state_dict(self) -> dict[str, Any]:
        return {}
