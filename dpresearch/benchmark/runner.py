"""One process, several training methods, the same model and data: examples/s and peak memory.

Every method trains its own copy of one initial model on the same synthetic batches. Rounds
interleave the methods (one logical step each, order rotating) so that drift of a shared,
noisy machine hits them alike; throughput is examples over the summed step times. A DP step
is exactly what ``DPStrategy`` runs: the engine over each physical batch, then noise once.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch
from rich.progress import Progress
from torch import nn
from torch.nn import functional as F

from dpresearch.benchmark.memory import step_peak_mb
from dpresearch.data.padding import count_real
from dpresearch.finetune.scopes import Scope
from dpresearch.module import classification_losses
from dpresearch.privacy.engines import ENGINES, make_engine
from dpresearch.privacy.self_check import LossModule
from dpresearch.privacy.step import accumulate, clipped_sum, gradients, noised
from dpresearch.privacy.strategy import split_batch
from dpresearch.privacy.validation import resolve_engine

NONPRIVATE = "nonprivate"
SECURE = "_secure"  # dp_<engine>_secure: noise from os.urandom (privacy.randomness=secure)


def parse_method(method: str) -> str | None:
    """The engine a method name asks for (None: non-private); clear error otherwise."""
    if method == NONPRIVATE:
        return None
    engine = method.removeprefix("dp_").removesuffix(SECURE)
    if not method.startswith("dp_") or engine not in ENGINES:
        choices = [NONPRIVATE, *(f"dp_{e}" for e in ENGINES), f"dp_bk{SECURE}"]
        raise ValueError(f"bench.methods: unknown method {method!r}; choose from {choices}")
    return engine


@dataclass
class Row:
    method: str
    scope: str
    examples_per_s: float
    ms_per_step: float
    peak_memory_mb: float
    ratio_to_nonprivate: float | None = None  # against non-private, same scope
    memory_ratio_to_nonprivate: float | None = None
    ratio_to_nonprivate_full: float | None = None  # against non-private full fine-tuning
    memory_ratio_to_dp_full: float | None = None  # against the same DP method, full scope


class Method:
    """A model copy, its optimizer and, for DP, its engine; ``step(x, y)`` trains once."""

    def __init__(
        self,
        name: str,
        scope: str,
        model: nn.Module,
        optimizer_factory: Callable,
        factors: Callable,
        per_layer: bool,
        physical: int,
        noise_std: float,
        expected_batch_size: int,
        device: torch.device,
    ):
        self.name, self.scope = name, scope
        self.model = model.to(device).train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = optimizer_factory(params)
        engine = parse_method(name)
        if engine is not None:
            resolve_engine(self.model, engine, per_layer)  # refuses what it cannot run, clearly
        # The engines see the model with its per-example loss (vmap differentiates that).
        wrapped = LossModule(self.model, classification_losses)
        self.engine = make_engine(engine, wrapped, factors, per_layer) if engine else None
        self.physical = physical
        self.noise_std = noise_std
        self.expected = expected_batch_size
        secure = name.endswith(SECURE)  # None: add_noise draws from the secure source
        self.generator = None if secure else torch.Generator(device=device).manual_seed(0)

    def _losses(self, x: Any, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"example_losses": F.cross_entropy(self.model(x), y, reduction="none")}

    def step(self, x: Any, y: torch.Tensor) -> None:
        chunks = split_batch((x, y), self.physical)
        if self.engine is None:  # averaged over the real examples, as PhysicalBatching does
            n = max(count_real((x, y)), 1)
            for xs, ys in chunks:
                (self._losses(xs, ys)["example_losses"].sum() / n).backward()
        else:  # the strategy's stages (dpresearch.privacy.step), on one process
            steps = [((xs, ys), partial(self._losses, xs, ys)) for xs, ys in chunks]
            accumulate(self.engine, steps)
            sums = noised(clipped_sum(self.engine, ()), self.noise_std, self.generator)
            for p, g in zip(self.engine.params, gradients(sums, self.expected)):
                p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj.to(device)


def benchmark(
    model: nn.Module,
    make_batch: Callable[[int], tuple[Any, torch.Tensor]],
    methods: list[str],
    *,
    scopes: dict[str, Scope] | None = None,
    optimizer_factory: Callable,
    factors: Callable,
    per_layer: bool = False,
    batch_size: int,
    physical: int,
    steps: int,
    warmup: int,
    noise_std: float,
    device: torch.device,
) -> list[Row]:
    """Time every method under every scope (default: the model as given, called "full"),
    round by round; returns one row per (scope, method) with the ratios filled in."""
    if not methods:
        raise ValueError("bench.methods is empty; e.g. bench.methods=[nonprivate,dp_bk]")
    for m in methods:
        parse_method(m)
    if steps < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(
            f"need bench.steps >= 1, bench.warmup >= 0, bench.batch_size >= 1; got "
            f"{steps}, {warmup}, {batch_size}"
        )
    scopes = scopes or {"full": None}
    runners = [
        Method(
            m,
            name,
            scope.apply(copy.deepcopy(model)) if scope else copy.deepcopy(model),
            optimizer_factory,
            factors=factors,
            per_layer=per_layer,
            physical=physical,
            noise_std=noise_std,
            expected_batch_size=batch_size,
            device=device,
        )
        for name, scope in scopes.items()
        for m in methods
    ]
    seconds = {(r.scope, r.name): 0.0 for r in runners}
    try:
        with Progress(transient=True) as progress:
            task = progress.add_task("benchmark rounds", total=warmup + steps)
            for r in range(warmup + steps):
                x, y = to_device(make_batch(r), device)
                order = runners[r % len(runners) :] + runners[: r % len(runners)]
                for runner in order:
                    _sync(device)
                    t0 = time.perf_counter()
                    runner.step(x, y)
                    _sync(device)
                    if r >= warmup:
                        seconds[runner.scope, runner.name] += time.perf_counter() - t0
                progress.advance(task)
            x, y = to_device(make_batch(warmup + steps), device)
            peaks = {
                (r.scope, r.name): step_peak_mb(
                    lambda r=r: r.step(x, y), r.model, r.optimizer, device
                )
                for r in runners
            }
    finally:
        for runner in runners:
            runner.close()
    rows = [
        Row(method, scope, batch_size * steps / t, 1000 * t / steps, peaks[scope, method])
        for (scope, method), t in seconds.items()
    ]
    find = {(row.scope, row.method): row for row in rows}
    for row in rows:
        base = find.get((row.scope, NONPRIVATE))
        if base is not None:
            row.ratio_to_nonprivate = row.examples_per_s / base.examples_per_s
            row.memory_ratio_to_nonprivate = row.peak_memory_mb / base.peak_memory_mb
        if (full := find.get(("full", NONPRIVATE))) is not None:
            row.ratio_to_nonprivate_full = row.examples_per_s / full.examples_per_s
        if (dp_full := find.get(("full", row.method))) is not None:
            row.memory_ratio_to_dp_full = row.peak_memory_mb / dp_full.peak_memory_mb
    return rows


def rows_as_dicts(rows: list[Row]) -> list[dict]:
    return [asdict(r) for r in rows]
