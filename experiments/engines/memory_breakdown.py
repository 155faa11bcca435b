"""What is alive at the peak of one bk step on WRN-16-4 (batch 64, CIFAR shape), against one
non-private step: the live tensors at the moment of the largest transient total, grouped by
the operator that allocated them and their size (torch.profiler memory events). Output:
memory_breakdown.txt. Run it alone:

    python experiments/engines/memory_breakdown.py > experiments/engines/memory_breakdown.txt
"""

from __future__ import annotations

from functools import partial

import torch
from torch._C._profiler import _EventType
from torch.nn import functional as F
from torch.profiler import ProfilerActivity, profile

from dpresearch.models.wrn import WideResNet
from dpresearch.privacy.engines import make_engine
from dpresearch.privacy.self_check import LossModule
from dpresearch.privacy.spec import FixedClipping


def walk(nodes):
    for node in nodes:
        yield node
        yield from walk(node.children)


def peak(step) -> tuple[float, list]:
    """(peak MiB, [((operator, MiB), count)] of the tensors alive at the peak)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in walk(prof.profiler.kineto_results.experimental_event_tree())
              if e.tag == _EventType.Allocation]  # fmt: skip
    events.sort(key=lambda e: e.start_time_ns)
    live, total, best, at_best = {}, 0, 0, {}
    for e in events:
        size = e.extra_fields.alloc_size
        total += size
        if size > 0:
            live[e.extra_fields.ptr] = (e.parent.name if e.parent else "?", size)
        else:
            live.pop(e.extra_fields.ptr, None)
        if total > best:
            best, at_best = total, dict(live)
    groups: dict[tuple, int] = {}
    for name, size in at_best.values():
        if size >= 2**20:
            key = (name, round(size / 2**20, 2))
            groups[key] = groups.get(key, 0) + 1
    return best / 2**20, sorted(groups.items(), key=lambda kv: -kv[0][1] * kv[1])


def show(title: str, result: tuple[float, list]) -> None:
    mib, groups = result
    print(f"{title}: transient peak {mib:.1f} MiB; tensors of 1 MiB or more alive at the peak:")
    for (name, size), count in groups:
        print(f"  {name:28s} {size:7.2f} MiB x {count}")


def main() -> None:
    torch.manual_seed(0)
    model = WideResNet(num_classes=10, in_channels=3).train()
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))

    def losses(xs, ys):
        return {"example_losses": F.cross_entropy(model(xs), ys, reduction="none")}

    def per_example(m, batch):
        return F.cross_entropy(m(batch[0]), batch[1], reduction="none")

    engine = make_engine("bk", LossModule(model, per_example), FixedClipping(1.0).factors)

    def bk_step():
        engine.run(partial(losses, x, y), (x, y))
        engine.take_sums()

    bk_step()  # warm-up
    show("bk", peak(bk_step))
    print("bk conv modes:", {k: v for k, v in engine.layer_modes.items() if "conv" in k})
    engine.close()
    show("non-private", peak(lambda: losses(x, y)["example_losses"].sum().backward()))


if __name__ == "__main__":
    main()
