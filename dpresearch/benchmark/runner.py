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

import torch
from rich.progress import Progress
from torch import nn
from torch.nn import functional as F

from dpresearch.benchmark.memory import step_peak_mb
from dpresearch.privacy.engines import ENGINES, make_engine
from dpresearch.privacy.noise import add_noise
from dpresearch.privacy.validation import resolve_engine

NONPRIVATE = "nonprivate"


def parse_method(method: str) -> str | None:
    """The engine a method name asks for (None: non-private); clear error otherwise."""
    if method == NONPRIVATE:
        return None
    engine = method.removeprefix("dp_")
    if not method.startswith("dp_") or engine not in ENGINES:
        choices = [NONPRIVATE, *(f"dp_{e}" for e in ENGINES)]
        raise ValueError(f"bench.methods: unknown method {method!r}; choose from {choices}")
    return engine


@dataclass
class Row:
    method: str
    examples_per_s: float
    ms_per_step: float
    peak_memory_mb: float
    ratio_to_nonprivate: float | None = None
    memory_ratio_to_nonprivate: float | None = None


class Method:
    """A model copy, its optimizer and, for DP, its engine; ``step(x, y)`` trains once."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        optimizer_factory: Callable,
        factors: Callable,
        per_layer: bool,
        physical: int,
        noise_std: float,
        expected_batch_size: int,
        device: torch.device,
    ):
        self.name = name
        self.model = model.to(device).train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = optimizer_factory(params)
        engine = parse_method(name)
        if engine is not None:
            resolve_engine(self.model, engine, per_layer)  # refuses what it cannot run, clearly
        self.engine = make_engine(engine, self.model, factors, per_layer) if engine else None
        self.physical = physical
        self.noise_std = noise_std
        self.expected = expected_batch_size
        self.generator = torch.Generator(device=device).manual_seed(0)

    def _losses(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"example_losses": F.cross_entropy(self.model(x), y, reduction="none")}

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        chunks = list(zip(x.split(self.physical), y.split(self.physical)))
        if self.engine is None:
            for xs, ys in chunks:
                (self._losses(xs, ys)["example_losses"].sum() / len(x)).backward()
        else:
            for xs, ys in chunks:
                self.engine.run(lambda xs=xs, ys=ys: self._losses(xs, ys))
            for p, s in zip(self.engine.params, self.engine.take_sums()):
                p.grad = add_noise(s, self.noise_std, self.generator) / self.expected
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark(
    model: nn.Module,
    make_batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    methods: list[str],
    *,
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
    """Time ``methods`` round by round; returns one row per method (ratios filled in)."""
    if not methods:
        raise ValueError("bench.methods is empty; e.g. bench.methods=[nonprivate,dp_bk]")
    for m in methods:
        parse_method(m)
    if steps < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(
            f"need bench.steps >= 1, bench.warmup >= 0, bench.batch_size >= 1; got "
            f"{steps}, {warmup}, {batch_size}"
        )
    runners = [
        Method(
            m,
            copy.deepcopy(model),
            optimizer_factory,
            factors=factors,
            per_layer=per_layer,
            physical=physical,
            noise_std=noise_std,
            expected_batch_size=batch_size,
            device=device,
        )
        for m in methods
    ]
    seconds = {m: 0.0 for m in methods}
    try:
        with Progress(transient=True) as progress:
            task = progress.add_task("benchmark rounds", total=warmup + steps)
            for r in range(warmup + steps):
                x, y = (t.to(device) for t in make_batch(r))
                order = runners[r % len(runners) :] + runners[: r % len(runners)]
                for runner in order:
                    _sync(device)
                    t0 = time.perf_counter()
                    runner.step(x, y)
                    _sync(device)
                    if r >= warmup:
                        seconds[runner.name] += time.perf_counter() - t0
                progress.advance(task)
            x, y = (t.to(device) for t in make_batch(warmup + steps))
            peaks = {
                r.name: step_peak_mb(lambda r=r: r.step(x, y), r.model, r.optimizer, device)
                for r in runners
            }
    finally:
        for runner in runners:
            runner.close()
    rows = [
        Row(m, batch_size * steps / seconds[m], 1000 * seconds[m] / steps, peaks[m])
        for m in methods
    ]
    base = next((row for row in rows if row.method == NONPRIVATE), None)
    if base is not None:
        for row in rows:
            row.ratio_to_nonprivate = row.examples_per_s / base.examples_per_s
            row.memory_ratio_to_nonprivate = row.peak_memory_mb / base.peak_memory_mb
    return rows


def rows_as_dicts(rows: list[Row]) -> list[dict]:
    return [asdict(r) for r in rows]
