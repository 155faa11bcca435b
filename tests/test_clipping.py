"""Per-example clipping against a brute-force loop over single examples, through the real
Lightning strategy (Opacus hooks), with and without splitting into physical batches."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dpresearch.privacy.spec import AutomaticClipping, FixedClipping
from tests.conftest import dp_strategy, fit_batches
from tests.helpers.models import mixed_model
from tests.helpers.references import brute_force_sum


def brute_force_update(
    model, x, y, clip: float, expected: int, lr: float, gamma: float | None = None
) -> list[torch.Tensor]:
    """-lr * (sum_i clip_C(g_i)) / expected, one example at a time; AUTO-S when gamma is set."""
    spec = FixedClipping(clip) if gamma is None else AutomaticClipping(clip, gamma=gamma)
    return [-lr * t / expected for t in brute_force_sum(model, x, y, spec.factors)]


@pytest.mark.parametrize("max_physical", [64, 7], ids=["one-physical-batch", "split-into-7s"])
@pytest.mark.parametrize("clip", [0.05, 1.0, 100.0])
def test_dp_step_equals_brute_force_clipped_mean(clip: float, max_physical: int) -> None:
    torch.manual_seed(1)
    x, y = torch.randn(24, 1, 6, 6), torch.randint(0, 5, (24,))
    model = mixed_model()
    reference = copy.deepcopy(model)
    before = [p.detach().clone() for p in model.parameters()]
    expected = 20  # the expected (Poisson) batch size, not the realized one
    fit_batches(model, x, y, [list(range(24))], dp_strategy(0.0, clip, expected, max_physical))
    want = brute_force_update(reference, x, y, clip, expected, lr=1.0)
    for p, b, w in zip(model.parameters(), before, want):
        torch.testing.assert_close(p.detach() - b, w, atol=1e-6, rtol=1e-4)


def test_clipping_is_active_small_threshold_differs_from_unclipped() -> None:
    """Guard against a test that cannot fail: a tiny threshold changes the update."""
    torch.manual_seed(1)
    x, y = torch.randn(16, 1, 6, 6), torch.randint(0, 5, (16,))
    small = brute_force_update(mixed_model(), x, y, 1e-3, 16, 1.0)
    large = brute_force_update(mixed_model(), x, y, 1e3, 16, 1.0)
    assert not torch.allclose(small[-1], large[-1])


def test_empty_poisson_batch_still_takes_a_noisy_step() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 5, (8,))
    model = mixed_model()
    before = [p.detach().clone() for p in model.parameters()]
    strategy = dp_strategy(noise=1.0, clip=1.0, expected_batch_size=4)
    fit_batches(model, x, y, [[]], strategy)
    assert strategy.dp_steps == 1
    moved = sum((p.detach() - b).abs().sum() for p, b in zip(model.parameters(), before))
    assert moved > 0  # pure noise, std sigma*C/E per coordinate


class NoEmptyBatches(nn.Module):
    """Raises on a batch of zero rows, as Hugging Face attention does (its reshapes fail)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) == 0:
            raise RuntimeError("cannot reshape tensor of 0 elements")
        return self.inner(x)


@pytest.mark.parametrize("engine", ["hooks", "bk", "vmap"])
def test_an_empty_batch_runs_forward_on_one_padding_row(engine: str) -> None:
    """A user-level run samples few users, so empty steps happen: the forward then runs on one
    padding example (zero gradient), and the step is the same pure-noise step."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 5, (8,))
    steps = {}
    for name, model in (("plain", mixed_model()), ("refusing", None)):
        if model is None:
            torch.manual_seed(0)
            model = NoEmptyBatches(mixed_model())
        before = [p.detach().clone() for p in model.parameters()]
        strategy = dp_strategy(noise=1.0, clip=1.0, expected_batch_size=4, engine=engine)
        fit_batches(model, x, y, [[]], strategy)
        assert strategy.dp_steps == 1 and strategy.step_examples == 0
        steps[name] = [p.detach() - b for p, b in zip(model.parameters(), before)]
    for a, b in zip(steps["plain"], steps["refusing"]):
        torch.testing.assert_close(a, b)  # the same noise, nothing else


def test_noise_has_std_sigma_c_over_expected_batch() -> None:
    """With an all-zero-gradient batch (clip tiny), the update is pure noise N(0, (sigma C/E)^2)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 200))
    x, y = torch.zeros(4, 1, 6, 6), torch.zeros(4, dtype=torch.long)
    before = [p.detach().clone() for p in model.parameters()]
    sigma, clip, expected = 2.0, 1e-6, 8
    fit_batches(model, x, y, [list(range(4))], dp_strategy(sigma, clip, expected), lr=1.0)
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    std = delta.std().item()
    assert abs(std - sigma * clip / expected) / (sigma * clip / expected) < 0.05


def test_nonprivate_physical_batches_accumulate_to_the_full_batch_gradient() -> None:
    from dpresearch.privacy.strategy import PhysicalBatchStrategy

    torch.manual_seed(2)
    x, y = torch.randn(23, 1, 6, 6), torch.randint(0, 5, (23,))
    split, whole = mixed_model(), mixed_model()
    before = [p.detach().clone() for p in split.parameters()]
    fit_batches(split, x, y, [list(range(23))], PhysicalBatchStrategy(5))
    whole.zero_grad()
    F.cross_entropy(whole(x), y).backward()
    for p, b, q in zip(split.parameters(), before, whole.parameters()):
        torch.testing.assert_close(p.detach() - b, -q.grad, atol=1e-6, rtol=1e-4)


def tiny_vit() -> nn.Module:
    from dpresearch.models.vit import ViT

    torch.manual_seed(0)
    return ViT(num_classes=5, in_channels=1, image_size=6, patch_size=3, dim=8, depth=1, heads=2)


def tiny_wrn() -> nn.Module:
    from dpresearch.models.wrn import WideResNet

    torch.manual_seed(0)
    return WideResNet(num_classes=5, in_channels=1, depth=10, widen_factor=1, groups=4)


@pytest.mark.parametrize("engine", ["hooks", "ghost", "bk"])
@pytest.mark.parametrize("factory", [tiny_vit, tiny_wrn], ids=["vit", "wrn"])
def test_shipped_architectures_clip_per_example_exactly(factory, engine: str) -> None:
    """Covers the ViT's class token and position embedding rules, and WRN's blocks."""
    torch.manual_seed(3)
    x, y = torch.randn(10, 1, 6, 6), torch.randint(0, 5, (10,))
    model, reference = factory(), factory()
    before = [p.detach().clone() for p in model.parameters()]
    strategy = dp_strategy(0.0, 0.5, 10, max_physical=4, engine=engine)
    fit_batches(model, x, y, [list(range(10))], strategy)
    want = brute_force_update(reference, x, y, 0.5, 10, lr=1.0)
    for p, b, w in zip(model.parameters(), before, want):
        torch.testing.assert_close(p.detach() - b, w, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("max_physical", [64, 5])
def test_automatic_clipping_equals_brute_force(max_physical: int) -> None:
    from dpresearch.privacy.spec import AutomaticClipping

    torch.manual_seed(4)
    x, y = torch.randn(12, 1, 6, 6), torch.randint(0, 5, (12,))
    model, reference = mixed_model(), mixed_model()
    before = [p.detach().clone() for p in model.parameters()]
    strategy = dp_strategy(0.0, 2.0, 12, max_physical)
    strategy.factors = AutomaticClipping(max_grad_norm=2.0, gamma=0.01).factors
    fit_batches(model, x, y, [list(range(12))], strategy)
    want = brute_force_update(reference, x, y, 2.0, 12, lr=1.0, gamma=0.01)
    for p, b, w in zip(model.parameters(), before, want):
        torch.testing.assert_close(p.detach() - b, w, atol=1e-6, rtol=1e-4)
    fixed = brute_force_update(mixed_model(), x, y, 2.0, 12, lr=1.0)
    assert not torch.allclose(want[-1], fixed[-1])  # the two functions really differ
