"""Conformance checks: one run's mechanism, step by step, against what its accountant assumes.

An audit's lower bound catches a run only when it leaks more than the claim by a wide margin;
these checks catch the implementation bugs behind such leaks directly, at a fixed false-alarm
rate, from what the DP step does (``StepHook``) and what the optimizer receives (Lightning's
``on_before_optimizer_step``):

- ``noise``: the released sum minus the clipped sum (over all processes) is N(0, (sigma C)^2)
  in every coordinate of every step: a chi-square test of the variance, pooled over the run
  and per step (independent noise only).
- ``clipping``: the engine's clipped sum equals, at every step, the clipped sum of the same
  real batch computed by plain autograd one example at a time (torch.func, as the vmap
  engine does; no engine rule), under the run's clipping function: an engine, rule or
  clipping bug on the real path (a layer left unclipped, a norm from the wrong layer). Exact
  up to float rounding; not run where the batch cannot be replayed (dropout, privacy units).
- ``scale``: the optimizer's gradient is the released sum over the PUBLIC expected batch size.
- ``sampling``: under Poisson sampling the realized batch sizes are Binomial(N, q): a
  chi-square test of their spread (fixed-size batches have none).
- ``scope``: parameters outside the trained set receive no gradient and never change.
- ``accounting``: the accountant composes every step this run released, resumes included
  (the count rides in the checkpoint), and the reported epsilon is the accountant's for it.

The statistical checks (noise, sampling) share ``false_alarm`` (a union bound over their
tests); the others are exact up to float rounding. ``conformance.json`` in the run folder
keeps the results; the audit reports them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from scipy import stats

from dpresearch.privacy.batching import batch_size, take_rows
from dpresearch.privacy.engines.vmap import _Losses, _one
from dpresearch.privacy.step import StepHook
from dpresearch.privacy.units import unwrap

CONFORMANCE = "conformance.json"
STATISTICAL_TESTS = 3  # noise pooled, noise per step, sampling: false_alarm is split among them
RELATIVE_TOLERANCE = 1e-4  # scale: float32 rounding of a division
CLIPPING_TOLERANCE = 1e-3  # clipping: float32 engines (bk's Gram norms) reach ~1e-4; bugs ~1e-1+
CHUNK = 128  # examples differentiated at once by the brute force
NOT_COVERED = ("audit record, not covered by the accountant: it describes the mechanism's "
               "internals (noise, batch sizes, canaries) for the auditor; an audited run is a "
               "test of the implementation, not a model to release")  # fmt: skip


def clipped_gradients(strategy, batch: Any) -> torch.Tensor:
    """Each example's gradient, clipped under the run's clipping function, by plain autograd
    (torch.func): (n, P) over the engine's trainable parameters, flattened in their order."""
    module, engine = strategy.lightning_module, strategy.engine
    call = _Losses(module)
    params = {"inner." + n: p.detach() for n, p in zip(engine.param_names, engine.params)}

    def loss_one(p: dict[str, torch.Tensor], example: Any) -> torch.Tensor:
        return torch.func.functional_call(call, p, (_one(example),))[0]

    per_example = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0))
    n = batch_size(batch)
    out = []
    with engine.paused():
        for start in range(0, n, CHUNK):
            rows = take_rows(batch, start, start + CHUNK)
            grads = [g.flatten(1) for g in per_example(params, rows).values()]
            norms = torch.stack([g.norm(dim=1) for g in grads], dim=1)
            if engine.per_layer:
                factors = strategy.factors(norms)
            else:
                factors = strategy.factors(norms.norm(dim=1)).unsqueeze(1).expand_as(norms)
            out.append(torch.cat([g * factors[:, j : j + 1] for j, g in enumerate(grads)], 1))
    return torch.cat(out)


def _replay_refusal(module: torch.nn.Module, batch: Any) -> str | None:
    """Why the brute force cannot replay this batch exactly, or None."""
    precision = str(module.trainer.precision)
    if not precision.startswith("32") and not precision.startswith("64"):
        return f"trainer.precision={precision}: the engine's autocast is not replayed"
    if unwrap(batch)[1] is not None:
        return "the batch holds privacy units of several rows (users or views)"
    for name, m in module.named_modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 and m.training:
            return f"dropout ({name}) draws masks the brute force cannot replay"
    return None


@dataclass
class CheckResult:
    name: str
    passed: bool | None  # None: not applicable to this run (``detail`` says why)
    detail: str
    p_value: float | None = None


def _two_sided_chi2(statistic: float, dof: float) -> float:
    """Two-sided p-value of a chi-square statistic (too small a spread is as suspect as too
    large a one)."""
    low = stats.chi2.cdf(statistic, dof)
    return float(min(1.0, 2 * min(low, stats.chi2.sf(statistic, dof))))


class ConformanceChecks(StepHook, pl.Callback):
    """The checks above, as an entry of a run's ``callbacks`` group (the audit adds it)."""

    def __init__(self, false_alarm: float = 1e-3):
        if not 0 < false_alarm < 1:
            raise ValueError(f"audit.false_alarm must be in (0, 1), got {false_alarm}")
        self.false_alarm = false_alarm
        self.sampling = None
        self.steps = 0  # released steps, carried through checkpoints
        self.noise_sq = 0.0  # sum over steps and coordinates of (noise / (sigma C))^2
        self.noise_coords = 0
        self.worst_step_p = 1.0
        self.worst_step = -1
        # Realized batch sizes enter only as sums (they are private: no list is kept).
        self.size_count, self.size_sum, self.size_sq_dev = 0, 0, 0.0
        self.scale_error = 0.0
        self.scope_errors: list[str] = []
        self.sampling_name: str | None = None
        self.clipping_error = 0.0  # largest relative gap, engine vs brute force
        self.clipping_worst = ""
        self.clipping_steps = 0
        self.clipping_refusal: str | None = None

    # --- state through a resume -----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        keys = ("steps", "noise_sq", "noise_coords", "worst_step_p", "worst_step", "size_count",
                "size_sum", "size_sq_dev",
                "scale_error", "scope_errors", "clipping_error", "clipping_worst",
                "clipping_steps")  # fmt: skip
        return {k: getattr(self, k) for k in keys}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for k, v in state_dict.items():
            setattr(self, k, v)

    # --- what the run does ---------------------------------------------------------------
    def on_train_set(self, datamodule) -> None:
        self.sampling = datamodule.sampler
        self.sampling_name = getattr(self.sampling, "name", None)

    def on_engine(self, strategy) -> None:
        self.strategy = strategy
        trained = {id(p) for p in strategy.engine.params}
        module = strategy.lightning_module
        self.frozen = {n: p for n, p in module.named_parameters() if id(p) not in trained}
        self.frozen_values = {n: p.detach().clone() for n, p in self.frozen.items()}
        self.independent = strategy.noise.name == "independent"

    def on_train_start(self, trainer, pl_module) -> None:
        # (not in on_engine: the strategy is iterating over its hooks there)
        self.strategy.step_hooks.insert(0, _EngineProbe(self))  # the engine's own sum, first

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.batch = batch

    def check_engine_sum(self, sums: list[torch.Tensor]) -> None:
        """The engine's clipped sum (before any other hook adds to it) against the brute
        force on the same batch and parameters."""
        refusal = _replay_refusal(self.strategy.lightning_module, self.batch)
        if refusal is not None:
            self.clipping_refusal = refusal
            return
        try:
            with torch.no_grad():
                per_example = clipped_gradients(self.strategy, self.batch)
        except (RuntimeError, NotImplementedError, ValueError) as err:  # e.g. a layer mixing
            # the batch's examples, which torch.func cannot differentiate one at a time
            self.clipping_refusal = f"torch.func cannot replay this model: {err}"[:300]
            return
        brute = per_example.sum(0)
        engine = torch.cat([s.detach().reshape(-1) for s in sums])
        # Relative to what rounding scales with: the summands' norms (a sum that cancels,
        # late in training, would make float32 rounding look large against its own norm).
        scale = float(per_example.norm(dim=1).sum()) or 1.0
        start = 0
        for name, p in zip(self.strategy.engine.param_names, self.strategy.engine.params):
            part = slice(start, start + p.numel())
            start += p.numel()
            error = float((engine[part] - brute[part]).norm()) / scale
            if error > self.clipping_error:
                self.clipping_error, self.clipping_worst = error, name
        self.clipping_steps += 1

    def on_clipped_sum(self, sums: list[torch.Tensor]) -> None:
        """Runs after every hook that adds to the sum (attach it last): the sum noise joins."""
        self.clipped = [s.detach().clone() for s in sums]
        self.std = self.strategy.gradient_noise_multiplier * self.strategy.clip_norm

    def on_release(self, sums: list[torch.Tensor]) -> None:
        clipped = self.clipped
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flat = torch.cat([c.reshape(-1) for c in clipped])
            torch.distributed.all_reduce(flat)  # the clipped sum over every process
            clipped = list(flat.split([c.numel() for c in clipped]))
        self.released = [s.detach().clone() for s in sums]
        if self.independent and self.std > 0:
            noise = torch.cat([(s.reshape(-1) - c.reshape(-1)).double()
                               for s, c in zip(sums, clipped)])  # fmt: skip
            statistic = float((noise / self.std).square().sum())
            self.noise_sq += statistic
            self.noise_coords += noise.numel()
            p = _two_sided_chi2(statistic, noise.numel())
            if p < self.worst_step_p:
                self.worst_step_p, self.worst_step = p, self.steps
        size = int(self.strategy.step_examples)
        self.size_count += 1
        self.size_sum += size
        self.size_sq_dev += (size - self.strategy.expected_batch_size) ** 2
        self.steps += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        expected = self.strategy.expected_batch_size
        for p, released in zip(self.strategy.engine.params, self.released):
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            error = float((grad * expected - released).abs().max())
            scale = float(released.abs().max()) or 1.0
            self.scale_error = max(self.scale_error, error / scale)
        for name, p in self.frozen.items():
            if p.grad is not None and bool(p.grad.ne(0).any()):
                self.scope_errors.append(f"{name} has a gradient at step {self.steps}")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for name, p in self.frozen.items():
            if not torch.equal(p.detach(), self.frozen_values[name].to(p.device)):
                self.scope_errors.append(f"{name} changed during training")
        if trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / CONFORMANCE
            tmp = path.with_suffix(".json.tmp")
            record = {"private": False, "note": NOT_COVERED,
                      "checks": [asdict(r) for r in self.results()]}  # fmt: skip
            tmp.write_text(json.dumps(record, indent=1) + "\n")
            os.replace(tmp, path)

    # --- the verdicts --------------------------------------------------------------------
    def results(self) -> list[CheckResult]:
        return [self._clipping(), self._noise(), self._scale(), self._sampling(), self._scope(),
                self._accounting()]  # fmt: skip

    def _clipping(self) -> CheckResult:
        if self.clipping_steps == 0:
            return CheckResult("clipping", None, f"not replayed: {self.clipping_refusal}")
        ok = self.clipping_error <= CLIPPING_TOLERANCE
        worst = f" (worst: {self.clipping_worst})" if self.clipping_worst else ""
        return CheckResult("clipping", ok, f"engine vs brute-force clipped sum on "
                           f"{self.clipping_steps} real batches: largest gap "
                           f"{self.clipping_error:.2g} of the summands' norms{worst}; tolerance "
                           f"{CLIPPING_TOLERANCE:g}")  # fmt: skip

    def _noise(self) -> CheckResult:
        alpha = self.false_alarm / STATISTICAL_TESTS
        if not self.independent:
            return CheckResult("noise", None, f"{self.strategy.noise.name} noise is correlated "
                               "across steps: its per-step variance is not checked")  # fmt: skip
        if self.noise_coords == 0:
            return CheckResult("noise", False, "no noise was drawn, while sigma > 0 is claimed")
        pooled = _two_sided_chi2(self.noise_sq, self.noise_coords)
        per_step = min(1.0, self.worst_step_p * self.steps)  # Bonferroni over the steps
        ratio = math.sqrt(self.noise_sq / self.noise_coords)
        p = min(pooled, per_step)
        return CheckResult("noise", p >= alpha / 2,
                           f"noise std {ratio:.4f} x sigma*C over {self.noise_coords} draws "
                           f"(pooled p {pooled:.2g}; worst step {self.worst_step}, p x steps "
                           f"{per_step:.2g}); flagged below {alpha / 2:.2g}", p)  # fmt: skip

    def _scale(self) -> CheckResult:
        ok = self.scale_error <= RELATIVE_TOLERANCE
        return CheckResult("scale", ok, f"largest relative gap between the gradient x "
                           f"expected batch size and the released sum: {self.scale_error:.2g} "
                           f"(tolerance {RELATIVE_TOLERANCE:g})")  # fmt: skip

    def _sampling(self) -> CheckResult:
        alpha = self.false_alarm / STATISTICAL_TESTS
        if self.sampling_name not in ("poisson", "poisson_masked"):
            return CheckResult("sampling", None, f"sampler {self.sampling_name}: not Poisson, "
                               "batch sizes not tested")  # fmt: skip
        n = self.size_count
        if n < 2:
            return CheckResult("sampling", None, "fewer than 2 steps")
        q, expected = self.strategy.sample_rate, self.strategy.expected_batch_size
        variance = expected * (1 - q)  # Binomial(N, q) with N q = E
        statistic = self.size_sq_dev / variance
        p = _two_sided_chi2(statistic, n)
        spread = math.sqrt(statistic / n)
        return CheckResult("sampling", p >= alpha, f"{n} batch sizes, mean "
                           f"{self.size_sum / n:.1f} (expected {expected}), "
                           f"spread {spread:.3f} x Binomial's (p {p:.2g}; flagged below "
                           f"{alpha:.2g})", p)  # fmt: skip

    def _scope(self) -> CheckResult:
        if not self.frozen:
            return CheckResult("scope", True, "every parameter is trained")
        errors = sorted(set(self.scope_errors))
        detail = f"{len(self.frozen)} frozen parameters" + (
            ": " + "; ".join(errors[:4]) if errors else ", untouched"
        )
        return CheckResult("scope", not errors, detail)

    def _accounting(self) -> CheckResult:
        s = self.strategy
        reported, composed = s.epsilon().epsilon, s.epsilon_after(self.steps).epsilon
        ok = s.dp_steps == self.steps and math.isclose(reported, composed, rel_tol=1e-9)
        return CheckResult("accounting", ok, f"{self.steps} steps released, the accountant "
                           f"composed {s.dp_steps}: epsilon {reported:.4f} reported, "
                           f"{composed:.4f} for every released step")  # fmt: skip


class _EngineProbe(StepHook):
    """Sees the engine's clipped sum before any other hook (canaries, injected bugs) adds to
    it, for the clipping check."""

    def __init__(self, checks: ConformanceChecks):
        self.checks = checks

    def on_clipped_sum(self, sums: list[torch.Tensor]) -> None:
        self.checks.check_engine_sum(sums)
