"""Where one training step's time goes: non-private against the bk engine, by operator.

    python experiments/engines/profile_step.py     # vit_micro and small_cnn -> profile_step.txt

Each workload runs its model on one synthetic batch of the benchmark's shape: non-private is
forward + backward of the summed loss; bk is ``engine.run`` (forward, one backward, norms,
clipped sum). Both run ``--steps`` times under ``torch.profiler`` after two warm-up steps, in
one process, alternating. The table lists the operators with the largest self CPU time and
what each adds to bk over non-private: what holds bk back from non-private speed. Run it
alone: this measures time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.profiler import ProfilerActivity, profile

from dpresearch.models.cnn import SmallCNN
from dpresearch.models.vit import ViT
from dpresearch.privacy.engines import make_engine
from dpresearch.privacy.spec import FixedClipping

WORKLOADS = {  # name -> (model factory, input shape, batch)
    "vit_micro": (
        lambda: ViT(
            num_classes=10, image_size=32, patch_size=4, dim=192, depth=4, heads=3, mlp_ratio=4.0
        ),
        (3, 32, 32),
        64,
    ),  # fmt: skip
    "small_cnn": (lambda: SmallCNN(num_classes=10, in_channels=1), (1, 8, 8), 256),
}


def _table(events, top: int) -> list[tuple[str, float, int]]:
    rows = [(e.key, e.self_cpu_time_total / 1e3, e.count) for e in events]
    return sorted(rows, key=lambda r: -r[1])[:top]


def profile_workload(name: str, steps: int, top: int) -> str:
    factory, shape, batch = WORKLOADS[name]
    torch.manual_seed(0)
    model = factory()
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    engine = make_engine("bk", model, FixedClipping(1.0).factors)

    def forward():
        losses = F.cross_entropy(model(x), y, reduction="none")
        return {"loss": losses.mean(), "example_losses": losses}

    def nonprivate():
        engine._active = False  # hooks idle: plain autograd with parameter gradients
        F.cross_entropy(model(x), y, reduction="sum").backward()
        model.zero_grad(set_to_none=True)

    def private():
        engine.run(forward)
        engine.take_sums()

    for _ in range(2):
        nonprivate()
        private()
    results = {}
    for label, fn in (("nonprivate", nonprivate), ("bk", private)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                fn()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) / 1e3
        results[label] = (total, {e.key: e.self_cpu_time_total / 1e3 for e in events},
                          _table(events, top))  # fmt: skip
    engine.close()
    np_total, np_ops, _ = results["nonprivate"]
    bk_total, bk_ops, bk_top = results["bk"]
    lines = [
        f"## {name}, batch {batch}, {steps} steps, {torch.get_num_threads()} threads",
        f"total self CPU time: non-private {np_total:.0f} ms, bk {bk_total:.0f} ms "
        f"({np_total / bk_total:.2f}x non-private speed)",
        "",
        f"{'operator':<36}{'bk ms':>10}{'share':>8}{'non-private ms':>16}{'bk extra ms':>13}",
    ]
    for key, ms, _count in bk_top:
        base = np_ops.get(key, 0.0)
        lines.append(f"{key:<36}{ms:>10.0f}{ms / bk_total:>8.1%}{base:>16.0f}{ms - base:>13.0f}")
    extra = bk_total - np_total
    lines.append(f"{'all operators':<36}{bk_total:>10.0f}{1:>8.1%}{np_total:>16.0f}{extra:>13.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", help=f"any of {list(WORKLOADS)} (default: all)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=14)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("profile_step.txt"))
    args = parser.parse_args(argv)
    unknown = set(args.workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s) {sorted(unknown)}; choose from {list(WORKLOADS)}")
    names = args.workloads or list(WORKLOADS)
    text = "\n\n".join(profile_workload(w, args.steps, args.top) for w in names)
    header = f"# python experiments/engines/profile_step.py, torch {torch.__version__}\n\n"
    args.out.write_text(header + text + "\n")
    sys.stdout.write(header + text + "\n")


if __name__ == "__main__":
    main()
