"""The engine proves itself on the user's model before any privacy is spent.

On a few SYNTHETIC examples shaped like the real batches (the data module draws them from a
public seed: no private record is read, nothing is released), each example's gradient is
computed by plain autograd, one example at a time, on a float64 copy of the model without
dropout (modules holding no trainable parameter in eval mode, the layers that do in training
mode, as engines' hooks expect), so both sides differentiate the same function. The engine
then runs on the
same examples, split into two physical batches, under the run's clipping function; its
per-example, per-parameter norms and its clipped sum must match the brute force to rounding.
A rule that is wrong for this model (a tied weight, a padding mode, a sequence-first layout, a
functional use of a weight, a layer read the wrong way) shows as a disagreement, named by
parameter, or as a crash; either way the engine is not used.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from dpresearch.privacy.batching import batch_size, split_batch
from dpresearch.privacy.engines import make_engine
from dpresearch.privacy.units import Units, split_units

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any], torch.Tensor]  # (model, batch) -> per-example losses
# Relative error that separates rounding from a wrong rule: exact engines agree to ~1e-12 in
# float64 and ~1e-6 in float32; the wrong rules found so far are off by 1e-2 or more.
TOLERANCE = {torch.float64: 1e-7, torch.float32: 1e-3}


class LossModule(nn.Module):
    """A model with its per-example loss, as the engines see a LightningModule."""

    def __init__(self, model: nn.Module, loss: LossFn):
        super().__init__()
        self.model = model
        self.loss = loss

    def example_losses(self, batch: Any) -> torch.Tensor:
        return self.loss(self.model, batch)

    def step(self, batch: Any) -> dict[str, torch.Tensor]:
        losses = self.example_losses(batch)
        return {"loss": losses.mean(), "example_losses": losses}


@dataclass
class CheckResult:
    engine: str
    passed: bool
    max_rel_error: float | None  # None: the engine crashed
    seconds: float
    dtype: str
    examples: int
    disagreeing: list[tuple[str, float]] = field(default_factory=list)  # worst first
    error: str | None = None  # the engine's exception, when it crashed

    def reason(self) -> str:
        if self.error is not None:
            return f"crashed: {self.error}"
        worst = ", ".join(f"{name} ({err:.2g})" for name, err in self.disagreeing[:4])
        more = len(self.disagreeing) - 4
        return f"relative error {self.max_rel_error:.3g} in {worst}" + (
            f" and {more} more" if more > 0 else ""
        )

    def to_dict(self) -> dict:
        out = asdict(self)
        out["disagreeing"] = [list(d) for d in self.disagreeing[:10]]
        return out


def _cast(batch: Any, dtype: torch.dtype) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(dtype) if batch.is_floating_point() else batch
    if isinstance(batch, dict):
        return {k: _cast(v, dtype) for k, v in batch.items()}
    return type(batch)(_cast(v, dtype) for v in batch)


def _without_dropout(module: nn.Module) -> nn.Module:
    """Eval mode (dropout off) except for the layers holding trainable parameters, which stay
    in training mode as during training (Opacus' hooks record nothing in eval mode)."""
    module.eval()
    for m in module.modules():
        if any(p.requires_grad for p in m.parameters(recurse=False)):
            m.training = True
    return module


def _dense(grad: torch.Tensor) -> torch.Tensor:
    """A copy of a gradient, dense (an Embedding(sparse=True) gives a sparse one)."""
    return grad.to_dense() if grad.is_sparse else grad.detach().clone()


def _example(batch: Any, i: int) -> Any:
    return split_batch(batch, 1)[i]


def _factors(clipping: Any, norms: torch.Tensor) -> torch.Tensor:
    if clipping.per_layer:
        return clipping.factors(norms)
    return clipping.factors(norms.norm(2, dim=1)).unsqueeze(1).expand_as(norms)


class SelfCheck:
    """Brute-force per-example gradients of one model on one synthetic batch, computed once,
    against which each engine is checked."""

    def __init__(self, model: nn.Module, loss: LossFn, batch: Any, clipping: Any,
                 grouped: bool = False):  # fmt: skip
        """``grouped``: the run's privacy units span several rows (users, augmented views):
        the check then clips units of two rows (weights 1/2, the last unit one row), so the
        engine's unit norms, with their cross terms, are checked too."""
        self.clipping = clipping
        self.batch_n = batch_size(batch)
        if self.batch_n < 2:
            raise ValueError("the self-check needs at least 2 examples")
        self.units = None
        if grouped:
            ids = torch.arange(self.batch_n) // 2
            self.units = Units.from_ids(ids, torch.full((self.batch_n,), 0.5))
        self._model, self._loss, self._batch = model, loss, batch
        self.module: LossModule | None = None  # built on first use, inside its timing

    def _reference(self) -> None:
        model, loss, batch = self._model, self._loss, self._batch
        self.module, self.dtype = self._float64_copy(model, loss, batch)
        self.batch = _cast(batch, self.dtype)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        names = {id(p): n.removeprefix("model.") for n, p in self.module.named_parameters()}
        self.names = [names[id(p)] for p in self.params]
        self.grads = self._brute_force()
        if self.units is not None:  # each unit's weighted sum of its rows' gradients
            self.grads = [
                [self.units.group(torch.stack([g[j] for g in self.grads]))[u]
                 for j in range(len(self.params))]
                for u in range(self.units.count)
            ]  # fmt: skip
        self.norms = torch.stack(  # (units, P)
            [torch.stack([g[j].norm() for j in range(len(self.params))]) for g in self.grads]
        )
        f = _factors(self.clipping, self.norms)
        self.sums = [
            sum(f[i, j] * self.grads[i][j] for i in range(len(self.grads)))
            for j in range(len(self.params))
        ]
        self._model = self._batch = None

    @staticmethod
    def _float64_copy(model: nn.Module, loss: LossFn, batch: Any) -> tuple[LossModule, Any]:
        """A float64 copy where the model runs in it (rounding far below any rule's error),
        else the model's own precision."""
        for dtype in (torch.float64, None):
            module = _without_dropout(LossModule(copy.deepcopy(model), loss))
            if dtype is not None:
                module = module.to(dtype)
            try:
                with torch.no_grad():
                    module.example_losses(_cast(batch, dtype) if dtype else batch)
                return module, dtype or next(model.parameters()).dtype
            except Exception as err:  # noqa: BLE001 - fall back to the model's own precision
                if dtype is None:
                    raise
                log.info("self-check: the model does not run in float64 (%s); float32", err)
        raise AssertionError("unreachable")

    def _brute_force(self) -> list[list[torch.Tensor]]:
        out = []
        for i in range(self.batch_n):
            for p in self.params:
                p.grad = None
            with torch.enable_grad():
                self.module.example_losses(_example(self.batch, i)).sum().backward()
            out.append(
                [
                    _dense(p.grad) if p.grad is not None else torch.zeros_like(p)
                    for p in self.params
                ]  # fmt: skip
            )
        for p in self.params:
            p.grad = None
        return out

    def run(self, engine: str) -> CheckResult:
        """Check ``engine``: never raises; a crash is a failed check."""
        start = time.perf_counter()
        if self.module is None:
            self._reference()  # the brute force, once; its time counts in the first result
        module = copy.deepcopy(self.module)
        result = CheckResult(engine, False, None, 0.0, str(self.dtype).removeprefix("torch."),
                             self.batch_n)  # fmt: skip
        eng = None
        try:
            eng = make_engine(engine, module, self.clipping.factors, self.clipping.per_layer)
            norms = []
            half = math.ceil(self.batch_n / 2)  # two physical batches: state must not leak
            for chunk, units in split_units(self.batch, self.units, half):
                eng.run(lambda chunk=chunk: module.step(chunk), chunk, units)
                norms.append(eng.last_param_norms.to(self.norms.dtype))
            sums = eng.take_sums()
            self._compare(result, torch.cat(norms), sums)
        except Exception as err:  # noqa: BLE001 - any failure disqualifies the engine
            result.error = f"{type(err).__name__}: {err}".strip()[:400]
            log.debug("self-check of %s crashed:\n%s", engine, traceback.format_exc())
        finally:
            if eng is not None:
                try:
                    eng.close()
                except Exception:  # noqa: BLE001
                    pass
        result.seconds = time.perf_counter() - start
        return result

    def _compare(self, result: CheckResult, norms: torch.Tensor, sums: list[torch.Tensor]):
        if norms.shape != self.norms.shape:
            raise RuntimeError(f"norms of shape {tuple(norms.shape)}, expected "
                               f"{tuple(self.norms.shape)}")  # fmt: skip
        # Squared norms: the ghost-norm identity computes them (a gradient that is zero in
        # exact arithmetic, like an attention key's bias, comes out as sqrt(rounding)). Errors
        # are relative to the parameter's own size, floored at sqrt(eps) of the largest total
        # (a parameter that small cannot move a clipping factor).
        floor = math.sqrt(torch.finfo(self.norms.dtype).eps)
        total = float(self.norms.norm(2, dim=1).max()) ** 2
        sum_scale = max(float(s.norm()) for s in self.sums)
        errors = []
        for j, name in enumerate(self.names):
            ref_sq, got_sq = self.norms[:, j] ** 2, norms[:, j].to(self.norms.dtype) ** 2
            e_norm = float((got_sq - ref_sq).abs().max()) / max(float(ref_sq.max()),
                                                                 floor * total, 1e-300)  # fmt: skip
            ref_s = self.sums[j]
            got = sums[j].to(ref_s.dtype).reshape(ref_s.shape)
            e_sum = float((got - ref_s).norm()) / max(float(ref_s.norm()), floor * sum_scale,
                                                      1e-300)  # fmt: skip
            err = max(e_norm, e_sum)
            errors.append((name, err if math.isfinite(err) else math.inf))
        tol = TOLERANCE.get(self.dtype, 1e-3)
        result.max_rel_error = max((e for _, e in errors), default=0.0)
        result.disagreeing = sorted([d for d in errors if d[1] > tol], key=lambda d: -d[1])
        result.passed = not result.disagreeing
