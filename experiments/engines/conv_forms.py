"""Per-example norm forms of one groups-1 Conv2d (3x3, padding 1) on this CPU, ms per call:

- unfold_mat: im2col, then per-example gradients by bmm (the bk rule before issue 19);
- unfold_ghost: im2col, then the ghost norm's Gram matrices;
- grouped: per-example gradients by the weight-gradient kernel with the batch as groups;
- patchgram: the padded input's Gram summed over kernel offsets, times the output Gram (no
  unfold; shown up to 16x16, beyond it the Gram is too large);
- wsum_conv / wsum_unfold: the clipped sum by the weight-gradient kernel / by im2col;
- nonpriv: one (non-private) weight gradient.

The bk engine's cost rule (``bk_rules.conv_norm_mode``) was fitted to this table
(conv_forms.txt). Run it alone on the machine:

    python experiments/engines/conv_forms.py
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.nn import functional as F
from torch.nn.grad import conv2d_weight

# (N, C, O, H): batch, input and output channels, image size
SHAPES = [(64, 64, 64, 32), (64, 128, 128, 16), (64, 256, 256, 8), (256, 32, 64, 8),
          (256, 64, 64, 4), (64, 16, 64, 32)]  # fmt: skip


def ms(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def forms(n: int, c: int, o: int, h: int) -> dict:
    x, b = torch.randn(n, c, h, h), torch.randn(n, o, h, h)
    factors = torch.rand(n)[:, None, None, None]

    def unfold_mat():
        cols = F.unfold(x, 3, padding=1)
        return torch.bmm(b.reshape(n, o, -1), cols.mT).pow(2).sum((1, 2))

    def unfold_ghost():
        cols, bb = F.unfold(x, 3, padding=1).mT, b.reshape(n, o, -1).mT
        return ((cols @ cols.mT) * (bb @ bb.mT)).sum((1, 2))

    def grouped():
        g = conv2d_weight(x.reshape(1, n * c, h, h), (n * o, c, 3, 3),
                          b.reshape(1, n * o, h, h), padding=1, groups=n)  # fmt: skip
        return g.view(n, -1).pow(2).sum(1)

    def patchgram():
        hp = h + 2
        flat = F.pad(x, (1, 1, 1, 1)).reshape(n, c, -1)
        gram = (flat.mT @ flat).view(n, hp, hp, hp, hp)
        patches = sum(gram[:, u : u + h, v : v + h, u : u + h, v : v + h]
                      for u in range(3) for v in range(3)).reshape(n, h * h, h * h)  # fmt: skip
        bb = b.reshape(n, o, -1).mT
        return (patches * (bb @ bb.mT)).sum((1, 2))

    def wsum_conv():
        return conv2d_weight(x, (o, c, 3, 3), b * factors, padding=1)

    def wsum_unfold():
        cols = F.unfold(x, 3, padding=1)
        return ((b * factors).reshape(n, o, -1) @ cols.mT).sum(0)

    def nonpriv():
        return conv2d_weight(x, (o, c, 3, 3), b, padding=1)

    out = {"unfold_mat": unfold_mat, "unfold_ghost": unfold_ghost, "grouped": grouped,
           "wsum_conv": wsum_conv, "wsum_unfold": wsum_unfold, "nonpriv": nonpriv}  # fmt: skip
    if h <= 16:
        out["patchgram"] = patchgram
    reference = unfold_mat()  # every norm form gives the same norms
    for name in ("unfold_ghost", "grouped", "patchgram"):
        if name in out:
            assert torch.allclose(out[name](), reference, rtol=1e-3), name
    return out


if __name__ == "__main__":
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for shape in SHAPES:
        print(shape, {name: round(ms(fn), 1) for name, fn in forms(*shape).items()})
