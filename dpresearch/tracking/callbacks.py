"""Callbacks that measure and record, independent of the logger chosen."""

from __future__ import annotations

import json
import math
import os
import resource
import socket
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from dpresearch.data.padding import count_real


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated on a GPU; peak resident set size of the process on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def machine_load() -> dict:
    """Where the run is timed and how busy that machine is (1-minute load average and CPUs
    this process may use): per-run throughput means little without it."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return {"host": socket.gethostname(), "cpus": cpus, "load_1m": round(os.getloadavg()[0], 2)}


class Throughput(pl.Callback):
    """Training examples per second, counting only time inside training batches; under data
    parallelism the examples of all processes (the strategy's ``step_examples``).

    ``per_step``: count this public constant per step instead (private runs: the expected
    batch size), since the realised Poisson batch sizes are a function of the private data."""

    def __init__(self, per_step: int | None = None) -> None:
        self.per_step = per_step
        self.examples = 0
        self.seconds = 0.0
        self._epoch_examples = 0
        self._epoch_seconds = 0.0
        self._t0 = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_examples, self._epoch_seconds = 0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - self._t0
        n = self.per_step or getattr(trainer.strategy, "step_examples", None)
        if n is None:
            n = count_real(batch)  # padding examples do not count
        self._epoch_seconds += dt
        self._epoch_examples += n
        self.seconds += dt
        self.examples += n

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._epoch_seconds > 0:
            rate = self._epoch_examples / self._epoch_seconds  # all ranks' examples: mean = rate
            pl_module.log("train_examples_per_s", rate, sync_dist=True)

    @property
    def examples_per_s(self) -> float | None:
        return self.examples / self.seconds if self.seconds > 0 else None


STAGE_PREFIXES = ("train_", "nonprivate/train_", "val_", "test_")


class MetricsRecorder(pl.Callback):
    """Appends every epoch's logged metrics to ``metrics.jsonl`` as soon as they exist, so a
    run that crashes keeps what it measured. A row holds its stage's metrics (``val_*`` in a
    validation row), never a stale copy of another stage's; a training row (the epoch's end)
    also every metric of no stage (epsilon spent, a user callback's), and the other rows those
    whose value is new. Each row has the time it was written (UTC) and the seconds since
    training started."""

    def __init__(self, path: Path, nonprivate: tuple[str, ...] = ()) -> None:
        """``nonprivate``: metric names (or prefixes ending in "/") released outside the
        accountant; each row lists those it holds under ``"nonprivate"``."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.nonprivate = nonprivate
        self.last: dict[str, float] = {}
        self.released: set[str] = set()  # every metric name written
        self._t0 = time.time()

    def _write(self, trainer: pl.Trainer, stage: str) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        current = {k: _num(v) for k, v in trainer.callback_metrics.items()}
        own = "val_" if stage == "val" else "test_" if stage == "test" else None
        metrics = {
            k: v for k, v in current.items()
            if (k.startswith(own) if own else k.startswith(STAGE_PREFIXES[:2]))
            or (not k.startswith(STAGE_PREFIXES)
                and (own is None or k not in self.last or self.last[k] != v))
        }  # fmt: skip
        self.last.update(current)
        now = time.time()
        row = {"stage": stage, "epoch": trainer.current_epoch, "step": trainer.global_step,
               "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
               + f".{int(now % 1 * 1000):03d}Z", "elapsed_s": round(now - self._t0, 3)}  # fmt: skip
        row.update(metrics)
        self.released.update(metrics)
        marked = sorted(k for k in metrics if is_nonprivate(k, self.nonprivate))
        if marked:
            row["nonprivate"] = marked
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def on_fit_start(self, trainer, pl_module) -> None:
        self._t0 = time.time()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self._write(trainer, "val")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._write(trainer, "train")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._write(trainer, "test")


def is_nonprivate(name: str, nonprivate: tuple[str, ...]) -> bool:
    return any(name == n or (n.endswith("/") and name.startswith(n)) for n in nonprivate)


def _num(v) -> float | None:
    x = float(v.item() if isinstance(v, torch.Tensor) else v)
    return x if math.isfinite(x) else None
