"""DP-SGD and its non-private baseline on Lightning's DDPStrategy (many processes, many nodes).

Lightning's DDPStrategy launches the processes (its script launcher, srun under SLURM,
torchrun), reads ranks from the cluster environment and sets up the process group; we keep all
of that. What we do not keep is the ``DistributedDataParallel`` wrapper: it all-reduces raw
gradients during every backward pass, before any per-example clipping could happen, and once
per physical batch. Instead each process clips its own examples into a local sum
(``PhysicalBatching``/``DPStepping``), and the sums of all processes are all-reduced once per
logical step, in one flat buffer (``_reduce_with_count``). Rank 0 alone adds the noise before
that reduction, so the reduced gradient carries one draw of std sigma*C, not one per process.
Parameters start equal on every process (broadcast from rank 0) and stay equal because every
process applies the identical reduced gradient.
"""

from __future__ import annotations

import itertools
import logging
import signal
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.strategies.launchers import _SubprocessScriptLauncher

from dpresearch.privacy.strategy import DPStepping, PhysicalBatching

log = logging.getLogger(__name__)


class DataParallel:
    """Mixin over DDPStrategy: one all-reduce of the step's sums instead of DDP's wrapper."""

    def __init__(self, *, backend: str | None = None, timeout_s: float = 1800, **kwargs: Any):
        super().__init__(process_group_backend=backend, timeout=timedelta(seconds=timeout_s),
                         **kwargs)  # fmt: skip
        self.reduce_seconds = 0.0  # wall time inside the all-reduce (the scaling study's input)
        self.reduce_calls = 0
        self.reduce_bytes = 0  # per call

    def configure_ddp(self) -> None:
        """Called by DDPStrategy.setup when fitting, in place of wrapping the model in DDP."""
        with torch.no_grad():
            for t in itertools.chain(self.model.parameters(), self.model.buffers()):
                dist.broadcast(t.data, src=0)

    def _reduce_with_count(self, sums: list[torch.Tensor]) -> int:
        """All-reduce the sums and the step's real-example count together (one collective)."""
        count = torch.tensor([float(self._local_examples)], device=self.root_device)
        tensors = [*sums, count]
        flat = torch.cat([t.reshape(-1) for t in tensors])
        if flat.is_cuda:
            torch.cuda.synchronize(flat.device)  # time the reduction, not the queued compute
        start = time.perf_counter()
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        if flat.is_cuda:
            torch.cuda.synchronize(flat.device)
        self.reduce_seconds += time.perf_counter() - start
        self.reduce_calls += 1
        self.reduce_bytes = flat.numel() * flat.element_size()
        for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
            t.copy_(part.view_as(t))
        self.step_examples = int(count.item())
        return self.step_examples

    def reduce_stats(self) -> dict[str, float]:
        """Mean all-reduce time and size per logical step, for summary.json."""
        calls = max(self.reduce_calls, 1)
        return {"allreduce_ms_per_step": 1000 * self.reduce_seconds / calls,
                "allreduce_mb_per_step": self.reduce_bytes / 2**20}  # fmt: skip

    def on_exception(self, exception: BaseException) -> None:
        """A failing launcher process takes the ranks it started down with it: they would
        otherwise wait in the next all-reduce until the process-group timeout."""
        super().on_exception(exception)
        launcher = self.launcher
        if isinstance(launcher, _SubprocessScriptLauncher) and launcher.procs:
            log.error("rank %d failed (%s); stopping the other ranks", self.global_rank, exception)
            launcher.kill(signal.SIGKILL)


class DDPPhysicalBatchStrategy(DataParallel, PhysicalBatching, DDPStrategy):
    """Non-private data-parallel training, logical batches in physical chunks."""

    def __init__(self, max_physical_batch_size: int, **ddp: Any):
        super().__init__(max_physical_batch_size=max_physical_batch_size, **ddp)


class DDPDPStrategy(DataParallel, DPStepping, DDPStrategy):
    """DP-SGD over many processes: per-example clipping on each rank, one reduction, one noise
    draw per logical step, one accountant step."""
