"""The bk engine's convolution rule, both ways of getting per-example norms (the patch Gram,
"ghost", and per-example weight gradients by the grouped kernel, "materialized"), forced in
turn and checked against a brute-force loop over single examples; and the cost rule's choice
on the shapes it was measured on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dpresearch.privacy.engines import bk_rules

CASES = {
    "conv1d k5 stride 2 padding 2": (nn.Conv1d(3, 4, 5, stride=2, padding=2), (3, 17)),
    "conv1d dilation 2 stride 2": (nn.Conv1d(2, 3, 3, stride=2, padding=1, dilation=2), (2, 12)),
    "conv2d k3 padding 1": (nn.Conv2d(3, 5, 3, padding=1), (3, 6, 6)),
    "conv2d stride 2": (nn.Conv2d(2, 4, 3, stride=2, padding=1), (2, 7, 7)),
    "conv2d dilation 2": (nn.Conv2d(2, 3, 2, dilation=2), (2, 7, 6)),
    "conv2d same, even kernel": (nn.Conv2d(2, 3, 4, padding="same"), (2, 6, 6)),
    "conv2d valid": (nn.Conv2d(2, 3, 3, padding="valid"), (2, 6, 5)),
    "conv2d reflect": (nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), (2, 6, 6)),
    "conv2d circular": (nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"), (2, 5, 6)),
    "conv2d rectangular": (nn.Conv2d(2, 3, (2, 3), stride=(1, 2), padding=(1, 0)), (2, 6, 7)),
}


def brute_force(conv: nn.Module, x: torch.Tensor, weights: torch.Tensor):
    """Each example's weight gradient of sum(conv(x_i) * weights_i), one example at a time."""
    grads = []
    for i in range(len(x)):
        conv.zero_grad()
        (conv(x[i : i + 1]) * weights[i : i + 1]).sum().backward()
        grads.append(conv.weight.grad.detach().clone())
    return torch.stack(grads)


@pytest.mark.parametrize("mode", ["ghost", "materialized"])
@pytest.mark.parametrize("name", CASES)
def test_both_norm_modes_are_exact_against_single_examples(name, mode, monkeypatch):
    torch.manual_seed(0)
    conv, shape = CASES[name]
    conv = conv.double()
    x = torch.randn(5, *shape, dtype=torch.float64)
    with torch.no_grad():
        out_shape = conv(x).shape
    upstream = torch.randn(out_shape, dtype=torch.float64)  # the output gradient B
    expected = brute_force(conv, x, upstream)
    monkeypatch.setattr(bk_rules, "conv_norm_mode", lambda *a: mode)
    (record, _bias) = bk_rules.conv(conv, x, upstream, {id(p) for p in conv.parameters()})
    assert record.mode == mode
    torch.testing.assert_close(record.sq_norms, expected.flatten(1).pow(2).sum(1))
    factors = torch.rand(5, dtype=torch.float64)
    torch.testing.assert_close(record.weighted_sum(factors),
                               torch.einsum("n,n...->...", factors, expected))  # fmt: skip
    torch.testing.assert_close(record.per_example(), expected)


@pytest.mark.parametrize("n,c,o,h,mode", [
    (64, 64, 64, 32, "materialized"),  # WRN's first stage: many positions
    (64, 16, 64, 32, "materialized"),
    (64, 128, 128, 16, "ghost"),  # its second and third: the patch Gram is cheaper
    (64, 256, 256, 8, "ghost"),
    (256, 64, 64, 4, "ghost"),  # the small CNN on digits after pooling
])  # fmt: skip
def test_the_cost_rule_picks_what_was_measured_faster(n, c, o, h, mode):
    conv = nn.Conv2d(c, o, 3, padding=1)
    x = torch.empty(n, c, h + 2, h + 2)
    assert bk_rules.conv_norm_mode(conv, x, torch.empty(n, o, h, h)) == mode
