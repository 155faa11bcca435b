"""Peak memory of one training step, as PyTorch itself accounts it.

On a GPU: CUDA's caching allocator peak (``max_memory_allocated``) above what was allocated
before the step. On the CPU there is no
allocator peak counter, and the process RSS blurs differences (freed memory stays mapped), so
the step runs once under ``torch.profiler`` with ``profile_memory=True``: every tensor
allocation and free is an event with its size; the running sum of sizes over the step, at its
maximum, is the step's peak of live transient tensors. Added to it: the bytes of the tensors
that persist across steps (parameters and optimizer state), counted directly.
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


def cpu_transient_peak_bytes(step: Callable[[], None]) -> int:
    """Largest amount of memory allocated during ``step`` and not yet freed."""
    from torch._C._profiler import _EventType

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [
        e
        for e in _walk(prof.profiler.kineto_results.experimental_event_tree())
        if e.tag == _EventType.Allocation and e.extra_fields.device.type == "cpu"
    ]
    events.sort(key=lambda e: e.start_time_ns)
    sizes = [e.extra_fields.alloc_size for e in events]  # frees are negative
    return max(itertools.accumulate(sizes), default=0)


def step_peak_mb(
    step: Callable[[], None],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
) -> float:
    """Peak memory (MiB) of one call of ``step``: persistent state plus transient tensors."""
    if device.type == "cuda":  # other methods' models share the GPU: count only this step's
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        transient = torch.cuda.max_memory_allocated(device) - before
    else:
        transient = cpu_transient_peak_bytes(step)
    return (persistent_bytes(model, optimizer) + transient) / 2**20
