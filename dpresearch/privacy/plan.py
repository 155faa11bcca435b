"""From config to a DP plan: sample rate, steps, calibrated noise; and the strategy that runs it."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace

import torch
from omegaconf import DictConfig
from torch import nn

from dpresearch.data.samplers import Sampling
from dpresearch.privacy.accounting import calibrate_noise, compute_epsilon
from dpresearch.privacy.mechanisms import IndependentNoise, NoiseMechanism
from dpresearch.privacy.mechanisms.streams import Accounted
from dpresearch.privacy.selection import PrivateSelection
from dpresearch.privacy.spec import (
    AdaptiveClipping,
    Clipping,
    DPSpec,
    NoPrivacy,
    PrivacyConfigError,
)
from dpresearch.privacy.strategy import DPStrategy, PhysicalBatching, PhysicalBatchStrategy
from dpresearch.privacy.validation import Check, select_engine
from dpresearch.trainer_settings import run_length

log = logging.getLogger(__name__)


@dataclass
class PrivacyPlan:
    """What a run will do, known before training. Every key ends up in summary.json."""

    private: bool
    sample_rate: float
    expected_batch_size: int
    steps_per_epoch: int
    steps: int
    epochs: int | None  # None: the run's length is trainer.max_steps
    accounting_matches_sampler: bool | None
    participation_period: int = 1  # any two steps of one example are at least this far apart
    participations: int | None = None  # the steps one example can join: what is accounted
    noise: dict | None = None  # the noise mechanism (summary.json's ``noise``)
    augmentations: int = 1  # views per example, averaged before clipping (one unit)
    privacy_unit: str = "example"  # what epsilon protects: one example, or one user's all
    noise_multiplier: float | None = None
    # Adaptive clipping: the gradient's own multiplier (above sigma) and the count's noise std.
    gradient_noise_multiplier: float | None = None
    count_noise: float | None = None
    max_grad_norm: float | None = None
    delta: float | None = None
    accountant: str | None = None
    target_epsilon: float | None = None
    planned_epsilon: float | None = None
    engine: str | None = None  # the DP engine that ran (clipping.engine=auto resolved)
    self_check: dict | None = None  # the engine's self-check (None: not private)
    tuning: dict | None = None  # a private selection's trial: per-trial and total epsilon
    debug: bool = False  # fast_dev_run: a smoke test, not a result

    def to_dict(self) -> dict:
        return asdict(self)


def make_plan(
    privacy: DPSpec | NoPrivacy,
    clipping: Clipping,
    sampling: Sampling,
    num_train: int,
    trainer: DictConfig,
    selection: PrivateSelection | None = None,
    noise: NoiseMechanism | None = None,
) -> PrivacyPlan:
    """Check the configuration against the data and calibrate the noise for the steps the
    trainer will really run (max_steps and limit_train_batches included; raises clear
    errors). A trial of a private selection calibrates for the whole tuning procedure:
    ``privacy.target_epsilon`` is then the sweep's total. The accountant composes the
    steps one example can join (``sampling.participations``: all of them under Poisson
    sampling, one in ``sampler.groups`` under cyclic Poisson), each at the sample rate."""
    noise = noise or IndependentNoise()
    if not privacy.enabled and noise.name != "independent":
        raise PrivacyConfigError(
            f"noise={noise.name} is a DP noise mechanism, but privacy=none: use privacy=dp, "
            "or leave noise at its default"
        )
    q = sampling.sample_rate(num_train)
    adaptive = isinstance(clipping, AdaptiveClipping)
    if privacy.enabled:
        noise.check_sampler(sampling)
        if adaptive and noise.name != "independent":
            raise PrivacyConfigError(
                f"clipping=adaptive with noise={noise.name}: the count's independent noise and "
                "the gradient's correlated noise are not accounted together; use "
                "noise=independent, or clipping=fixed"
            )
    length = run_length(trainer, sampling.steps_per_epoch(num_train))
    steps = length.steps
    if length.debug and privacy.enabled and privacy.target_epsilon is not None:
        # fast_dev_run: calibrate as the full run would, so its sigma is the real one's
        steps = run_length(trainer, sampling.steps_per_epoch(num_train), debug=False).steps
    plan = PrivacyPlan(
        private=privacy.enabled,
        sample_rate=q,
        expected_batch_size=sampling.expected_batch_size,
        steps_per_epoch=length.steps_per_epoch,
        steps=steps,
        epochs=length.epochs,
        debug=length.debug,
        accounting_matches_sampler=sampling.is_poisson if privacy.enabled else None,
    )
    if not privacy.enabled:
        return plan
    privacy.check_dataset(num_train)
    plan.augmentations = privacy.augmentations
    plan.privacy_unit = privacy.unit
    plan.participation_period = period = sampling.participation_period
    plan.participations = k = sampling.participations(steps)
    plan.noise = noise.record(steps, period)
    stream = noise.stream(steps, period)
    if selection is not None and not isinstance(stream, Accounted):
        raise PrivacyConfigError(
            f"a private selection composes DP-SGD trials; noise={noise.name} is accounted "
            "otherwise: use noise=independent or banded_mf, or selection=nonprivate"
        )
    sigma = privacy.noise_multiplier
    if sigma is None and selection is not None:
        sigma = selection.calibrate(privacy.target_epsilon, q, k, privacy.delta)
    elif sigma is None:  # the accounted sigma is linear in sigma: calibrate it, scale back
        rate, unit, count = stream.accounted(q, 1.0, steps, period)
        sigma = calibrate_noise(privacy.target_epsilon, rate, count, privacy.delta,
                                privacy.accountant) / unit  # fmt: skip
    if selection is not None:
        account = selection.account(q, sigma, k, privacy.delta).to_dict()
        plan.tuning = {"selection": "private", "total_target_epsilon": privacy.target_epsilon,
                       **account, "score_mechanism": selection.mechanism()}  # fmt: skip
    planned = compute_epsilon(*stream.accounted(q, sigma, steps, period), privacy.delta,
                              privacy.accountant)  # fmt: skip
    plan.noise_multiplier = sigma
    if adaptive:  # refused here if the count's noise alone would exceed the budget
        plan.gradient_noise_multiplier = clipping.gradient_multiplier(
            sigma, sampling.expected_batch_size
        )
        plan.count_noise = clipping.count_std(sampling.expected_batch_size)
    plan.max_grad_norm = clipping.max_grad_norm
    plan.delta = privacy.delta
    plan.accountant = privacy.accountant  # requested; summary.json says which answered
    plan.target_epsilon = privacy.target_epsilon
    plan.planned_epsilon = planned.epsilon
    if not sampling.is_poisson:
        log.warning(
            "sampler=%s draws fixed-size shuffled batches, but the accountant assumes Poisson "
            "sampling: the reported epsilon is NOT a proven guarantee for this run "
            "(use sampler=poisson)",
            sampling.name,
        )
    return plan


def choose_engine(
    plan: PrivacyPlan, model: nn.Module, clipping: Clipping, check: Check | None
) -> PrivacyPlan:
    """The plan with its DP engine chosen (clipping.engine=auto resolved) after the engine
    self-check (``check``; None: clipping.self_check=false), and the check's record."""
    if not plan.private:
        return plan
    engine, results = select_engine(model, clipping.engine, clipping.per_layer, check)
    return replace(plan, engine=engine,
                   self_check=self_check_record(engine, results, check is not None))  # fmt: skip


def self_check_record(engine: str, results: dict, enabled: bool) -> dict:
    """summary.json's ``self_check``: the chosen engine's result, and every engine tried."""
    if not enabled:
        log.warning("clipping.self_check=false: the %s engine's per-example gradients are NOT "
                    "checked on this model; the records say so", engine)  # fmt: skip
        return {"enabled": False, "passed": None}
    chosen = results[engine]
    seconds = sum(r.seconds for r in results.values())
    return {"enabled": True, "passed": chosen.passed, "engine": engine,
            "max_rel_error": chosen.max_rel_error, "seconds": seconds,
            "dtype": chosen.dtype, "examples": chosen.examples,
            "tried": {name: r.to_dict() for name, r in results.items()}}  # fmt: skip


def build_strategy(
    plan: PrivacyPlan,
    privacy: DPSpec | NoPrivacy,
    clipping: Clipping,
    sampling: Sampling,
    device: torch.device,
    seed: int,
    ddp: dict | None = None,
    noise: NoiseMechanism | None = None,
) -> PhysicalBatching:
    """The Lightning strategy for the plan (a private plan's engine chosen: ``choose_engine``):
    one device, or with ``ddp`` (the trainer group's ``ddp`` node: backend, timeout_s) data
    parallel over Lightning's DDP processes, where Lightning picks each process's device."""
    if ddp is not None:
        from dpresearch.privacy.distributed import DDPDPStrategy, DDPPhysicalBatchStrategy

        where = dict(ddp)
        single, private = DDPPhysicalBatchStrategy, DDPDPStrategy
    else:
        where = {"device": device}
        single, private = PhysicalBatchStrategy, DPStrategy
    if not plan.private:
        return single(sampling.max_physical_batch_size, **where)
    if plan.engine is None:
        raise ValueError("a private plan needs its engine chosen first (choose_engine)")
    noise_seed = privacy.noise_seed if privacy.noise_seed is not None else seed + 1
    return private(
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=clipping.max_grad_norm,
        expected_batch_size=sampling.expected_batch_size,
        sample_rate=plan.sample_rate,
        delta=plan.delta,
        accountant=plan.accountant,
        max_physical_batch_size=sampling.max_physical_batch_size,
        noise_seed=noise_seed,
        factors=clipping.factors,
        engine=plan.engine,
        per_layer=clipping.per_layer,
        # A tuning trial's budget guard holds it to its share: its own planned epsilon.
        target_epsilon=plan.planned_epsilon if plan.tuning else privacy.target_epsilon,
        calibrated_steps=None if plan.debug or privacy.target_epsilon is None else plan.steps,
        randomness=privacy.randomness,
        noise=noise or IndependentNoise(),
        noise_steps=plan.steps,
        participation_period=plan.participation_period,
        adaptive=clipping if isinstance(clipping, AdaptiveClipping) else None,
        **where,
    )
