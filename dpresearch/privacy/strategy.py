"""Lightning strategies that own the DP wiring, so the LightningModule stays privacy-agnostic.

One Lightning batch is one *logical* batch (one optimizer step; for Poisson sampling its size
varies). The strategy splits it into physical batches of at most ``max_physical_batch_size``
so memory is bounded whatever the sampling rate, and accumulates before the single step:

- ``PhysicalBatchStrategy`` (non-private): plain gradient accumulation, averaged over the
  logical batch's real (non-padding) examples.
- ``DPStrategy``: a DP engine (hooks, ghost or bk) adds each physical batch's clipped
  per-example gradients to a running sum; after the last one, Gaussian noise of std sigma*C is
  added once and the sum divided by the expected batch size. Each DP step is counted once for
  the accountant.

Both run every physical batch's forward and backward inside ``training_step`` and hand the
optimizer its gradient in ``backward``, after Lightning's ``zero_grad``. The behaviour lives in
two mixins (``PhysicalBatching``, ``DPStepping``) so that the same code runs on one device here and
on many processes in ``dpresearch.privacy.distributed``: there, ``_reduce_with_count``
all-reduces the local sums once per logical step, and only rank 0 adds noise, before that
reduction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import SingleDeviceStrategy, Strategy
from pytorch_lightning.trainer.states import TrainerFn

from dpresearch.data.padding import PAD_LABEL, count_real, labels, padding_like
from dpresearch.privacy.accounting import EpsilonResult, compute_epsilon
from dpresearch.privacy.batching import batch_size
from dpresearch.privacy.budget import BudgetGuard
from dpresearch.privacy.engines import Engine, make_engine
from dpresearch.privacy.mechanisms import IndependentNoise, NoiseMechanism
from dpresearch.privacy.noise import gaussian
from dpresearch.privacy.spec import AdaptiveClipping, FixedClipping, PrivacyConfigError
from dpresearch.privacy.step import StepHook, accumulate, clipped_sum, gradients, noised, release
from dpresearch.privacy.units import Units, real_units, split_units, unwrap

log = logging.getLogger(__name__)


def summed_loss(output: Any, chunk: Any, units: Units | None = None) -> torch.Tensor:
    """Sum of the physical batch's per-example losses, each times its row's weight in its
    privacy unit (a mean loss times the batch size when the module returns no per-example
    losses)."""
    if isinstance(output, dict) and "example_losses" in output:
        losses = output["example_losses"]
        if units is not None and units.weights is not None:
            losses = losses * units.weights.to(losses.device, losses.dtype)
        return losses.sum()
    loss = output["loss"] if isinstance(output, dict) else output
    return loss * batch_size(chunk)


def real_count(batch: Any) -> int:
    """The logical batch's real (non-padding) units: examples, or users / augmented examples
    when its rows form privacy units."""
    plain, units = unwrap(batch)
    if units is None:
        return count_real(plain)
    return real_units(units, labels(plain) != PAD_LABEL)


class PhysicalBatching:
    """Mixin for a Lightning Strategy: a logical batch may span several physical batches.

    Non-private: plain gradient accumulation, averaged over the logical batch's real examples
    (over all processes under data parallelism)."""

    def __init__(self, max_physical_batch_size: int, **strategy_kwargs: Any):
        super().__init__(**strategy_kwargs)
        self.max_physical_batch_size = max_physical_batch_size
        self._grads: list[torch.Tensor] | None = None
        self._local_examples = 0
        self.step_examples: int | None = None  # real examples in the last logical step, all ranks

    def setup(self, trainer: pl.Trainer) -> None:
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(
                "trainer.accumulate_grad_batches must be 1: one Lightning batch is already a "
                "whole logical batch; bound memory with sampler.max_physical_batch_size"
            )
        super().setup(trainer)

    def _params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.lightning_module.parameters() if p.requires_grad]

    def _physical_steps(
        self, args: tuple, kwargs: dict
    ) -> list[tuple[Any, Callable[[], Any], Units | None]]:
        """(physical batch, its training_step, its privacy units): cut between units only."""
        batch, units = unwrap(args[0])
        if batch_size(batch) == 0:  # an empty Poisson batch: one padding row to run forward on
            batch, units = padding_like(batch), None
        rest = args[1:]
        return [
            (chunk, partial(Strategy.training_step, self, chunk, *rest, **kwargs), chunk_units)
            for chunk, chunk_units in split_units(batch, units, self.max_physical_batch_size)
        ]

    def _reduce_with_count(self, sums: list[torch.Tensor]) -> int:
        """Sum ``sums`` in place over all processes and return the step's real examples on
        all of them. One process: nothing to reduce (no device sync on the hot path)."""
        self.step_examples = self._local_examples
        return self.step_examples

    def training_step(self, *args: Any, **kwargs: Any):
        params = self._params()
        for p in params:
            p.grad = None
        output = None
        for chunk, step, units in self._physical_steps(args, kwargs):
            output = step()
            if batch_size(chunk):
                summed_loss(output, chunk, units).backward()
        self._local_examples = real_count(args[0])
        self._grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        return output

    def backward(self, closure_loss: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The gradient was computed in ``training_step``; reduce it and hand it over (after
        Lightning's zero_grad)."""
        grads = self._grads or []
        n = max(self._reduce_with_count(grads), 1)
        for p, g in zip(self._params(), grads):
            p.grad = g / n
        self._grads = None
        return closure_loss


class DPStepping(PhysicalBatching):
    """Mixin for a Lightning Strategy: each optimizer step is a DP-SGD step (clipped sums
    from a DP engine, noise once per logical step, accounting), run as the stages of
    ``dpresearch.privacy.step``; ``StepHook``s observe them (the budget guard is one)."""

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
        factors: Callable[[torch.Tensor], torch.Tensor] | None = None,
        engine: str = "hooks",
        per_layer: bool = False,
        target_epsilon: float | None = None,
        calibrated_steps: int | None = None,
        randomness: str = "seeded",
        noise: NoiseMechanism | None = None,
        noise_steps: int | None = None,
        participation_period: int = 1,
        adaptive: AdaptiveClipping | None = None,
        **strategy_kwargs: Any,
    ):
        super().__init__(max_physical_batch_size, **strategy_kwargs)
        # Adaptive clipping: its threshold moves each step (from a noisy count the accountant
        # covers); ``max_grad_norm`` stays the initial one, ``clip_norm`` is the current one.
        self.adaptive = adaptive
        # The noise mechanism and its state between steps (used on the process that adds
        # noise); examples join at most one step in participation_period (see epsilon_after).
        self.noise = noise or IndependentNoise()
        self.noise_stream = self.noise.stream(noise_steps or 1, participation_period)
        self.participation_period = participation_period
        self.target_epsilon = target_epsilon  # set: sigma was calibrated, and the budget guards
        self.calibrated_steps = calibrated_steps  # the steps sigma was calibrated for
        self.randomness = randomness  # secure: noise from the OS's generator, never saved
        self.factors = factors or FixedClipping(max_grad_norm).factors
        self.engine_name = engine
        self.per_layer = per_layer
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.expected_batch_size = expected_batch_size
        self.sample_rate = sample_rate
        self.delta = delta
        self.accountant = accountant
        self.noise_seed = noise_seed
        self.dp_steps = 0
        self.engine: Engine | None = None
        self._generator: torch.Generator | None = None
        self._pending = False
        self._epsilon_cache: tuple[int, EpsilonResult] | None = None
        self._restored_generator: torch.Tensor | None = None
        self.planned_steps: int | None = None  # the steps the trainer will run (all of them)
        self.resumed_steps = 0
        self.step_hooks: list[StepHook] = []  # what observes each step (see attach_step_hook)
        self.budget = BudgetGuard(target_epsilon) if target_epsilon is not None else None
        if self.budget is not None:
            self.attach_step_hook(self.budget)

    def setup(self, trainer: pl.Trainer) -> None:
        super().setup(trainer)
        if trainer.state.fn != TrainerFn.FITTING:
            return  # evaluation needs no per-example gradients
        if len(self.optimizers) != 1:
            raise ValueError(f"DP training needs exactly one optimizer, got {len(self.optimizers)}")
        self.engine = make_engine(
            self.engine_name, self.lightning_module, self.factors, self.per_layer
        )
        for hook in self.step_hooks:
            hook.on_engine(self)
        if self.adaptive is not None:
            self.adaptive.counting = True  # from here on its factors count unclipped units
        if self.randomness == "seeded":
            self._generator = torch.Generator(device=self.root_device).manual_seed(self.noise_seed)
            if self._restored_generator is not None:
                self._generator.set_state(self._restored_generator)
                self._restored_generator = None

    def attach_step_hook(self, hook: StepHook) -> None:
        """Have ``hook`` observe every DP step (see ``dpresearch.privacy.step``)."""
        self.step_hooks.append(hook)

    @property
    def stopped_by_budget(self) -> bool:
        """Whether training ended early because the target epsilon was reached."""
        return self.budget is not None and self.budget.stopped

    # --- resuming: the DP state a checkpoint carries -------------------------------------
    def dp_state_dict(self) -> dict:
        """What resuming needs beyond the model and optimizer: the steps already spent (the
        accountant's history), the mechanism's parameters, and the noise stream."""
        generator = self._generator.get_state() if self._generator is not None else None
        state = {"dp_steps": self.dp_steps, "noise_multiplier": self.noise_multiplier,
                 "sample_rate": self.sample_rate, "delta": self.delta,
                 "accountant": self.accountant, "max_grad_norm": self.max_grad_norm,
                 "randomness": self.randomness, "noise_generator": generator}  # fmt: skip
        if self.adaptive is not None:
            state["adaptive_clipping"] = self._adaptive_settings()
        if self.noise.name != "independent" or self.participation_period != 1:
            state.update(noise_mechanism=self.noise.name,
                         participation_period=self.participation_period,
                         noise_state=self.noise_stream.state_dict())  # fmt: skip
        return state

    def load_dp_state_dict(self, state: dict) -> None:
        """Continue a checkpoint's mechanism. Its sample rate, delta, accountant and clipping
        threshold must match this run's: one accountant history cannot mix mechanisms. A
        calibrated sigma (target_epsilon set) is replaced by the checkpoint's (the noise
        already spent), and the budget guard then stops the run at the target."""
        mismatched = [
            f"{key} (checkpoint {state[key]}, this run {getattr(self, key)})"
            for key in ("sample_rate", "delta", "accountant", "max_grad_norm")
            if state[key] != getattr(self, key)
        ]
        # Checkpoints from before privacy.randomness: a secure run saved no noise generator.
        randomness = state.get(
            "randomness", "secure" if state.get("noise_generator") is None else "seeded"
        )
        if randomness != self.randomness:
            mismatched.append(f"randomness (checkpoint {randomness}, this run {self.randomness})")
        # Checkpoints from before the noise group: independent noise, every step accounted.
        defaults = (("noise_mechanism", "independent", self.noise.name),
                    ("participation_period", 1, self.participation_period))  # fmt: skip
        for key, default, mine in defaults:
            if state.get(key, default) != mine:
                mismatched.append(f"{key} (checkpoint {state.get(key, default)}, this run {mine})")
        adaptive = state.get("adaptive_clipping")
        mine = self._adaptive_settings() if self.adaptive is not None else None
        if (adaptive is None) != (mine is None) or (
            mine and any(adaptive[k] != mine[k] for k in mine if k != "clip_norm")
        ):
            mismatched.append(f"adaptive clipping (checkpoint {adaptive}, this run {mine})")
        sigma = state["noise_multiplier"]
        if sigma != self.noise_multiplier:
            if self.target_epsilon is None:
                mismatched.append(
                    f"noise_multiplier (checkpoint {sigma}, this run {self.noise_multiplier})"
                )
            else:
                log.warning(
                    "resuming keeps the checkpoint's noise multiplier %.4f (this run's config "
                    "would calibrate %.4f for its own number of steps)", sigma,
                    self.noise_multiplier,
                )  # fmt: skip
                self.noise_multiplier = sigma
        if mismatched:
            raise PrivacyConfigError(
                "cannot resume: the checkpoint's DP mechanism differs in "
                + "; ".join(mismatched)
                + ". Resume with the checkpoint's settings, or start a new run"
            )
        self.dp_steps = int(state["dp_steps"])
        self._epsilon_cache = None
        if adaptive is not None:
            self.adaptive.max_grad_norm = float(adaptive["clip_norm"])
        if state.get("noise_state"):
            planned = self.noise_stream.state_dict()
            try:
                self.noise_stream.load_state_dict(state["noise_state"])
            except ValueError as err:
                raise PrivacyConfigError(f"cannot resume: {err}") from err
            kept = self.noise_stream.state_dict()
            if any(planned[k] != kept[k] for k in ("coefficients", "decay", "scale")
                   if k in planned):  # fmt: skip
                log.warning(
                    "resuming keeps the checkpoint's noise strategy (optimised for the steps "
                    "that run planned); set noise.horizon to plan a strategy across resumes"
                )
        if state.get("noise_generator") is not None and self.randomness == "seeded":
            self._restored_generator = state["noise_generator"]
            if self._generator is not None:
                self._generator.set_state(self._restored_generator)
                self._restored_generator = None

    # --- the steps ---------------------------------------------------------------------
    def on_train_start(self) -> None:
        """Check the run's length against the calibration, then let the hooks refuse the run
        before any step (the budget guard: a resume past the target, forced extra steps)."""
        super().on_train_start()
        trainer = self.lightning_module.trainer
        self.planned_steps = int(trainer.estimated_stepping_batches)
        self.resumed_steps = self.dp_steps  # taken before this fit (a resume's checkpoint)
        if self.dp_steps == 0 and self.calibrated_steps not in (None, self.planned_steps):
            raise PrivacyConfigError(  # a Trainer setting the plan did not model
                f"sigma was calibrated for {self.calibrated_steps} steps but Lightning will run "
                f"{self.planned_steps}: a trainer setting changes the run's length in a way the "
                "privacy plan does not follow; remove it or set privacy.noise_multiplier"
            )
        for hook in self.step_hooks:
            hook.before_training(self)

    def _adaptive_settings(self) -> dict:
        a = self.adaptive
        return {"initial": a.initial, "target_quantile": a.target_quantile,
                "learning_rate": a.learning_rate, "count_noise": a.count_noise,
                "clip_norm": a.max_grad_norm}  # fmt: skip

    @property
    def clip_norm(self) -> float:
        """The clipping threshold of the next step (moves under adaptive clipping)."""
        return self.adaptive.max_grad_norm if self.adaptive is not None else self.max_grad_norm

    @property
    def gradient_noise_multiplier(self) -> float:
        """The gradient's noise multiplier: sigma, or under adaptive clipping sigma_g > sigma,
        which with the count's noise makes one Gaussian mechanism of multiplier sigma."""
        if self.adaptive is None:
            return self.noise_multiplier
        return self.adaptive.gradient_multiplier(self.noise_multiplier, self.expected_batch_size)

    def training_step(self, *args: Any, **kwargs: Any):
        for hook in self.step_hooks:
            hook.before_step(self)
        if self.adaptive is not None:
            self.adaptive.take_count(self.root_device)  # nothing left from another pass
        output = accumulate(self.engine, self._physical_steps(args, kwargs))
        self._local_examples = real_count(args[0])
        self._pending = True
        return output

    def backward(self, closure_loss: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Noise the clipped sum once and give it to the optimizer as its gradient.

        Only rank 0 adds noise, to its own clipped sum before the one all-reduce: the reduced
        sum then carries exactly one draw of std sigma*C whatever the number of processes, and
        every process receives the identical noised gradient."""
        if not self._pending:
            raise RuntimeError("DPStrategy.backward without a DP training_step before it")
        sums = clipped_sum(self.engine, self.step_hooks)
        count = []  # adaptive clipping: the centred count of unclipped units, released too
        if self.adaptive is not None:
            count = [self.adaptive.take_count(sums[0].device).to(sums[0].dtype)]
        if self.is_global_zero:  # generator None: the secure source
            std = self.gradient_noise_multiplier * self.clip_norm
            sums = noised(sums, std, self.noise_stream, self._generator, self.step_hooks)
            if count and self.noise_multiplier > 0:
                std = self.adaptive.count_std(self.expected_batch_size)
                count = [count[0] + gaussian(count[0], std, self._generator)]
        self._reduce_with_count([*sums, *count])
        if count:
            self.adaptive.update(float(count[0]), self.expected_batch_size)
        release(sums, self.step_hooks)
        for p, g in zip(self.engine.params, gradients(sums, self.expected_batch_size)):
            p.grad = g
        self._pending = False
        self.dp_steps += 1
        for hook in self.step_hooks:
            hook.after_step(self)
        return closure_loss

    def epsilon_after(self, steps: int) -> EpsilonResult:
        """Epsilon of this mechanism after ``steps`` steps: what its noise stream says the
        accountant composes (DP-SGD and BandMF: the participations; BLT: one Gaussian)."""
        accounted = self.noise_stream.accounted(
            self.sample_rate, self.noise_multiplier, steps, self.participation_period
        )
        return compute_epsilon(*accounted, self.delta, self.accountant)

    def epsilon(self) -> EpsilonResult:
        """Epsilon spent so far (cached per step count)."""
        if self._epsilon_cache is None or self._epsilon_cache[0] != self.dp_steps:
            self._epsilon_cache = (self.dp_steps, self.epsilon_after(self.dp_steps))
        return self._epsilon_cache[1]

    def teardown(self) -> None:
        if self.engine is not None:
            self.engine.close()  # leave the user's module as we found it
            self.engine = None
        super().teardown()


class PhysicalBatchStrategy(PhysicalBatching, SingleDeviceStrategy):
    """Non-private training on one device."""

    def __init__(self, max_physical_batch_size: int, device: str | torch.device = "cpu"):
        super().__init__(max_physical_batch_size, device=torch.device(device))


class DPStrategy(DPStepping, SingleDeviceStrategy):
    """DP-SGD on one device."""

    def __init__(self, *, device: str | torch.device = "cpu", **dp: Any):
        super().__init__(device=torch.device(device), **dp)
