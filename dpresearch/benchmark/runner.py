"""One process, several training variants, the same model and data: examples/s and peak memory.

Each variant (a method under one setting of the axes: scope, sampler, compile, physical batch,
precision) is a run.py configuration, prepared by ``dpresearch.train.prepare`` and trained by
``trainer.fit``: the same sampler, data loader, strategy (engine, noise, budget guard),
callbacks and logger that ``python run.py`` uses, on synthetic data of the dataset's shape.
There is no second implementation of the DP step to drift from the one users train with.

A variant's block is one epoch of ``warmup + steps + 1`` logical steps: the warm-up steps are
not timed (first calls, torch.compile), the ``steps`` after them are timed as wall time
from the end of the last warm-up step to the end of the last timed one (data loading, the
step, the optimizer, the callbacks and the logger included), and the final step is run
under the memory probe. Rounds repeat every block with the order rotating, so that drift of
a shared machine hits the variants alike; a variant's throughput is its timed examples (the
public expected batch size per step) over its summed seconds.

The peer rows ``opacus_hooks`` and ``opacus_ghost`` run Opacus itself as its README teaches
(``dpresearch.benchmark.opacus_direct``), in the same process, on the same data.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from rich.progress import Progress

from dpresearch.benchmark.memory import TransientPeak, persistent_bytes
from dpresearch.privacy.engines import ENGINES

NONPRIVATE = "nonprivate"
SECURE = "_secure"  # dp_<engine>_secure: noise and batches from the OS (privacy.randomness)
OPACUS = ("opacus_hooks", "opacus_ghost")  # Opacus used directly (grad_sample_mode)
COMPILABLE = (None, "bk")  # engines whose variants may set trainer.compile=true


def parse_method(method: str) -> str | None:
    """The engine a method name asks for (None: non-private; ``opacus_*``: Opacus' own
    grad_sample_mode); a clear error otherwise."""
    if method == NONPRIVATE:
        return None
    if method in OPACUS:
        return method
    engine = method.removeprefix("dp_").removesuffix(SECURE)
    if not method.startswith("dp_") or engine not in ENGINES:
        choices = [NONPRIVATE, *(f"dp_{e}" for e in ENGINES), f"dp_bk{SECURE}", *OPACUS]
        raise ValueError(f"bench.methods: unknown method {method!r}; choose from {choices}")
    return engine


@dataclass(frozen=True)
class Variant:
    """One method under one setting of every axis."""

    method: str
    scope: str = "full"
    sampler: str = "poisson"
    compile: bool = False
    physical: int = 256  # max physical batch size (the logical batch is split into these)
    precision: str = "32-true"

    def axes(self) -> tuple:
        return (self.scope, self.sampler, self.compile, self.physical, self.precision)

    def skip_reason(self) -> str | None:
        """Why this combination is not run (None: it is)."""
        engine = parse_method(self.method)
        if engine in OPACUS:
            if self.sampler != "poisson" or self.compile or not self.precision.startswith("32"):
                return ("Opacus is run as its README teaches: its own Poisson sampler, not "
                        "compiled, float32")  # fmt: skip
            return None
        if self.compile and engine not in COMPILABLE:
            return f"trainer.compile=true works with the bk engine only, not {engine}"
        return None

    def overrides(self, batch_size: int) -> list[str]:
        """The run.py overrides that make the benchmark's config this variant's run."""
        engine = parse_method(self.method)
        out = [f"finetune={self.scope}", f"sampler={self.sampler}",
               f"sampler.expected_batch_size={batch_size}",
               f"sampler.max_physical_batch_size={self.physical}",
               f"trainer.compile={str(self.compile).lower()}",
               f"trainer.precision={self.precision}", "trainer.max_epochs=1",
               "trainer.enable_progress_bar=false", "++trainer.limit_val_batches=0",
               "logger=csv", "run.checkpoint=false", "extras.print_config=false"]  # fmt: skip
        if engine is None:
            return [*out, "privacy=none"]
        if engine in OPACUS:
            return [*out, "privacy=dp"]
        out += ["privacy=dp", f"clipping.engine={engine}"]
        if self.method.endswith(SECURE):
            out.append("privacy.randomness=secure")
        return out


@dataclass
class Row:
    method: str
    scope: str
    sampler: str
    compile: bool
    physical_batch_size: int
    precision: str
    examples_per_s: float
    ms_per_step: float
    peak_memory_mb: float
    ratio_to_nonprivate: float | None = None  # against non-private under the same settings
    memory_ratio_to_nonprivate: float | None = None
    ratio_to_nonprivate_full: float | None = None  # ... and under the full scope
    memory_ratio_to_dp_full: float | None = None  # against the same method, full scope
    ratio_to_reference: float | None = None  # against non-private at every axis' first value

    @property
    def variant(self) -> Variant:
        return Variant(self.method, self.scope, self.sampler, self.compile,
                       self.physical_batch_size, self.precision)  # fmt: skip


@dataclass
class Block:
    """What one block measured."""

    seconds: float
    steps: int
    peak_bytes: int


class StepClock(pl.Callback):
    """Times the training loop from the end of step ``warmup`` to the end of step
    ``warmup + steps`` (everything between included), then measures the next step's memory."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps = warmup, steps
        self.seconds: float | None = None
        self.peak_bytes: int | None = None
        self._t0 = 0.0
        self._probe: TransientPeak | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.estimated_stepping_batches != self.warmup + self.steps + 1:
            raise RuntimeError(
                f"a benchmark block runs {trainer.estimated_stepping_batches} steps, not "
                f"{self.warmup + self.steps + 1}: a trainer override changes the run's length"
            )

    @staticmethod
    def _sync(trainer: pl.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup + self.steps:
            self._probe = TransientPeak(trainer.strategy.root_device)
            self._probe.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # optimizer steps taken, this one included
        if step == self.warmup:
            self._sync(trainer)
            self._t0 = time.perf_counter()
        elif step == self.warmup + self.steps:
            self._sync(trainer)
            self.seconds = time.perf_counter() - self._t0
        elif self._probe is not None:
            transient = self._probe.stop()
            self._probe = None
            optimizer = trainer.optimizers[0]
            self.peak_bytes = transient + persistent_bytes(pl_module, optimizer)


def lightning_block(
    cfg: Any, variant: Variant, folder: Path, examples: int, warmup: int, steps: int
) -> Block:
    """One block of ``variant`` through run.py's own preparation and ``trainer.fit``, on
    ``examples`` synthetic training examples."""
    from dpresearch.train import Run, build, prepare

    build(cfg.extras).apply()  # as run.py does: its warning filters
    datamodule = build(cfg.dataset)
    datamodule.use_synthetic(examples)
    r = Run(cfg, folder, {}, {"machine": {}})
    r.datamodule = datamodule
    prepare(r, multirun=False)
    clock = StepClock(warmup, steps)
    r.trainer.callbacks.append(clock)
    try:
        r.trainer.fit(r.module, datamodule=r.datamodule)
    finally:
        if r.logger is not None and hasattr(r.logger, "finalize"):
            r.logger.finalize("success")
    if clock.seconds is None or clock.peak_bytes is None:
        raise RuntimeError(f"{variant.method}: training stopped before its last step")
    return Block(clock.seconds, steps, clock.peak_bytes)


def benchmark(
    compose: Callable[[list[str]], Any],
    variants: list[Variant],
    *,
    batch_size: int,
    steps: int,
    warmup: int,
    rounds: int,
    workdir: Path | None = None,
) -> tuple[list[Row], list[dict]]:
    """Time every variant, ``rounds`` blocks each, order rotating; ``compose(overrides)``
    gives the run config of a variant (run.py's config plus those overrides). Returns the
    rows with their ratios, and the variants skipped with why."""
    if not variants:
        raise ValueError("bench.methods is empty; e.g. bench.methods=[nonprivate,dp_bk]")
    if steps < 1 or warmup < 1 or batch_size < 1 or rounds < 1:
        raise ValueError(
            f"need bench.steps >= 1, bench.warmup >= 1, bench.batch_size >= 1 and "
            f"bench.rounds >= 1; got {steps}, {warmup}, {batch_size}, {rounds}"
        )
    skipped = [{**asdict(v), "reason": v.skip_reason()} for v in variants if v.skip_reason()]
    runnable = [v for v in variants if not v.skip_reason()]
    examples = batch_size * (warmup + steps + 1)  # one epoch is the block
    configs = {v: compose(v.overrides(batch_size)) for v in runnable}
    blocks: dict[Variant, list[Block]] = {v: [] for v in runnable}
    work = Path(workdir or tempfile.mkdtemp(prefix="dpresearch-bench-"))
    with Progress(transient=True) as progress:
        task = progress.add_task("benchmark blocks", total=rounds * len(runnable))
        for r in range(rounds):
            order = runnable[r % len(runnable) :] + runnable[: r % len(runnable)]
            for v in order:
                progress.update(task, description=f"round {r + 1}/{rounds}: {v.method}")
                folder = work / f"{len(blocks[v])}" / "_".join(map(str, (v.method, *v.axes())))
                if v.method in OPACUS:
                    from dpresearch.benchmark.opacus_direct import opacus_block

                    block = opacus_block(configs[v], v, examples, warmup, steps)
                else:
                    block = lightning_block(configs[v], v, folder, examples, warmup, steps)
                blocks[v].append(block)
                progress.advance(task)
    rows = []
    for v, done in blocks.items():
        seconds = sum(b.seconds for b in done)
        timed = sum(b.steps for b in done)
        peak = max(b.peak_bytes for b in done) / 2**20
        rows.append(Row(v.method, v.scope, v.sampler, v.compile, v.physical, v.precision,
                        batch_size * timed / seconds, 1000 * seconds / timed, peak))  # fmt: skip
    fill_ratios(rows, variants[0].axes())
    return rows, skipped


def fill_ratios(rows: list[Row], reference: tuple) -> None:
    """Each row against non-private training under its own settings, under the full scope,
    and under the ``reference`` settings (every axis at its first value)."""
    find = {r.variant: r for r in rows}
    for row in rows:
        v = row.variant
        base = find.get(Variant(NONPRIVATE, *v.axes()))
        if base is not None:
            row.ratio_to_nonprivate = row.examples_per_s / base.examples_per_s
            row.memory_ratio_to_nonprivate = row.peak_memory_mb / base.peak_memory_mb
        full = find.get(Variant(NONPRIVATE, "full", *v.axes()[1:]))
        if full is not None:
            row.ratio_to_nonprivate_full = row.examples_per_s / full.examples_per_s
        dp_full = find.get(Variant(v.method, "full", *v.axes()[1:]))
        if dp_full is not None:
            row.memory_ratio_to_dp_full = row.peak_memory_mb / dp_full.peak_memory_mb
        ref = find.get(Variant(NONPRIVATE, *reference))
        if ref is not None:
            row.ratio_to_reference = row.examples_per_s / ref.examples_per_s


def variants_of(methods: list[str], axes: dict[str, list]) -> list[Variant]:
    """Every method under every combination of the axes' values (scopes outermost)."""
    for m in methods:
        parse_method(m)
    names = ("scope", "sampler", "compile", "physical", "precision")
    values = [list(axes[n]) for n in names]
    for n, vs in zip(names, values):
        if not vs:
            raise ValueError(f"bench axis {n} is empty")
    return [Variant(m, *combo) for combo in itertools.product(*values) for m in methods]


def rows_as_dicts(rows: list[Row]) -> list[dict]:
    return [asdict(r) for r in rows]
