"""Peak memory of one training step, as PyTorch itself accounts it.

On a GPU: CUDA's caching allocator peak (``max_memory_allocated``) above what was allocated
before the step. On the CPU there is no allocator peak counter, and the process RSS blurs
differences (freed memory stays mapped), so the step runs under ``torch.profiler`` with
``profile_memory=True``: every tensor allocation and free is an event with its size; the
running sum of sizes over the step, at its maximum, is the step's peak of live transient
tensors. Added to it: the bytes of the tensors that persist across steps (parameters and
optimizer state), counted directly.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import torch
from torch.profiler import ProfilerActivity, profile


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def persistent_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return tensor_bytes(model.parameters()) + tensor_bytes(state)


def _walk(nodes) -> Iterable:
    for node in nodes:
        yield node
        yield from _walk(node.children)


class TransientPeak:
    """``start()`` ... ``stop()``: the largest amount of memory allocated between the two
    and not yet freed (bytes), on ``device``. Start and stop may be called from different
    places (a Lightning callback's batch-start and batch-end hooks)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._profile: profile | None = None
        self._before = 0

    def start(self) -> None:
        if self.device.type == "cuda":  # other models on the GPU: count only this step's
            torch.cuda.synchronize(self.device)
            self._before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        self._profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._profile.__enter__()

    def stop(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self._before
        from torch._C._profiler import _EventType

        prof, self._profile = self._profile, None
        prof.__exit__(None, None, None)
        events = [
            e
            for e in _walk(prof.profiler.kineto_results.experimental_event_tree())
            if e.tag == _EventType.Allocation and e.extra_fields.device.type == "cpu"
        ]
        events.sort(key=lambda e: e.start_time_ns)
        sizes = [e.extra_fields.alloc_size for e in events]  # frees are negative
        return max(itertools.accumulate(sizes), default=0)


def cpu_transient_peak_bytes(step: Callable[[], None]) -> int:
    """Largest amount of memory allocated during ``step`` and not yet freed."""
    probe = TransientPeak(torch.device("cpu"))
    probe.start()
    step()
    return probe.stop()
