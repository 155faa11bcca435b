"""Every clipping function x every DP engine against a brute-force loop over single examples.

The reference: each example's gradient from its own backward pass, multiplied by the clipping
factor of its norm, summed. Engines are checked directly (three architectures) and through the
real Lightning strategy with physical batches.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dpresearch.privacy.spec import AutomaticClipping, FixedClipping
from tests.conftest import dp_strategy, fit_batches
from tests.helpers.models import (
    MODELS,
    data,
    group_norm_cnn,
    vit_micro,
)
from tests.helpers.references import (
    assert_sums_close,
    brute_force_per_layer_sum,
    brute_force_sum,
    engine_sum,
)

ENGINES = ["hooks", "ghost", "bk", "vmap"]
FUNCTIONS = {
    "fixed": FixedClipping(max_grad_norm=0.5).factors,
    "automatic": AutomaticClipping(max_grad_norm=0.5, gamma=0.01).factors,
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("model_name", MODELS)
def test_clipped_sum_equals_brute_force(model_name: str, function: str, engine: str) -> None:
    torch.manual_seed(0)
    model = MODELS[model_name]()
    n = 6 if model_name == "vit" else 10
    x, y = data(model_name, n)
    factors = FUNCTIONS[function]
    want = brute_force_sum(copy.deepcopy(model), x, y, factors)
    got, eng = engine_sum(model, x, y, engine, factors, chunks=2)
    assert_sums_close(got, want)
    assert all(p.grad is None for p in model.parameters())  # no stray non-private gradient


def test_clipping_factors_matter() -> None:
    """Guard against a comparison that cannot fail: clipped and unclipped sums differ."""
    model, (x, y) = group_norm_cnn(), data("cnn", 8)
    tight = brute_force_sum(model, x, y, FixedClipping(max_grad_norm=1e-3).factors)
    loose = brute_force_sum(model, x, y, FixedClipping(max_grad_norm=1e3).factors)
    assert not torch.allclose(tight[-1], loose[-1])


def test_bk_mixed_rule_picks_ghost_or_materialized_per_layer() -> None:
    """2T^2 < d_in*d_out -> ghost norm; a conv with many positions and few weights -> G_i."""
    _, eng = engine_sum(vit_micro(), *data("vit", 2), "bk", FUNCTIONS["fixed"])
    assert eng.layer_modes["model.blocks.0.mlp.0.weight"] == "ghost"  # T=65: 2T^2=8450 < 192*768
    _, eng = engine_sum(group_norm_cnn(), *data("cnn", 2), "bk", FUNCTIONS["fixed"])
    assert eng.layer_modes["model.0.weight"] == "materialized"  # T=64: 2T^2 > 27*8
    assert eng.layer_modes["model.7.weight"] == "ghost"  # 2-D input: ||a|| ||b||


@pytest.mark.parametrize("engine,passes", [("bk", 1), ("ghost", 2), ("hooks", 1)])
def test_backward_passes_per_physical_batch(monkeypatch, engine: str, passes: int) -> None:
    calls = []
    original = torch.autograd.backward
    monkeypatch.setattr(torch.autograd, "backward", lambda *a, **k: calls.append(1) or
                        original(*a, **k))  # fmt: skip
    engine_sum(vit_micro(), *data("vit", 3), engine, FUNCTIONS["fixed"])
    assert len(calls) == passes


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("max_physical", [64, 4], ids=["one-physical-batch", "split-into-4s"])
def test_strategy_step_equals_brute_force_for_every_engine(engine: str, max_physical: int):
    torch.manual_seed(1)
    x, y = data("cnn", 11)
    model = group_norm_cnn()
    reference = copy.deepcopy(model)
    before = [p.detach().clone() for p in model.parameters()]
    factors = FUNCTIONS["automatic"]
    strategy = dp_strategy(0.0, 0.5, 9, max_physical, engine=engine, factors=factors)
    fit_batches(model, x, y, [list(range(11))], strategy)
    want = brute_force_sum(reference, x, y, factors)
    for p, b, w in zip(model.parameters(), before, want):
        torch.testing.assert_close(p.detach() - b, -w / 9, atol=1e-6, rtol=1e-4)
    assert strategy.dp_steps == 1
    assert all(not hasattr(m, "_forward_hooks") or not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("engine", ENGINES)
def test_noise_std_is_sigma_c_once_per_logical_step(engine: str) -> None:
    """A zero-gradient model (no bias, zero inputs): every update is pure noise. Over 20 steps
    of 4 examples in physical batches of 2, the summed update has std sqrt(20) sigma C / E;
    noise per physical batch, or none, would be off by sqrt(2) or more."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 200, bias=False))
    x, y = torch.zeros(4, 3, 2, 2), torch.zeros(4, dtype=torch.long)
    sigma, clip, expected, steps = 2.0, 0.7, 8, 20
    before = model[1].weight.detach().clone()
    strategy = dp_strategy(sigma, clip, expected, max_physical=2, engine=engine)
    fit_batches(model, x, y, [list(range(4))] * steps, strategy)
    std = ((model[1].weight.detach() - before) / steps**0.5).std().item()
    assert strategy.dp_steps == steps
    assert abs(std - sigma * clip / expected) / (sigma * clip / expected) < 0.05


@pytest.mark.parametrize("engine", ENGINES)
def test_masked_poisson_step_equals_the_unpadded_step(engine: str) -> None:
    """Padding to static physical batches (and a batch of padding only) changes nothing, even
    with noise: the same seed draws the same noise once per logical step."""
    from dpresearch.data.padding import PAD_INDEX

    x, y = data("cnn", 12)
    real = [[0, 3, 4, 5, 7, 8, 9, 10, 11], [], [1, 2]]
    padded = [b + [PAD_INDEX] * (8 * max(1, -(-len(b) // 8)) - len(b)) for b in real]
    assert [len(b) for b in padded] == [16, 8, 8]
    results = []
    for batches in (real, padded):
        torch.manual_seed(0)
        model = group_norm_cnn()
        fit_batches(model, x, y, batches, dp_strategy(1.0, 0.5, 6, 8, engine=engine))
        results.append([p.detach() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


class Scale(nn.Module):
    """A trainable layer no engine knows."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.weight


def test_unsupported_layer_is_refused_naming_module_type_and_engines() -> None:
    from dpresearch.privacy.spec import PrivacyConfigError
    from dpresearch.privacy.validation import resolve_engine

    bags = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.EmbeddingBag(5, 4, mode="max")))
    with pytest.raises(PrivacyConfigError, match=r"1\.0 \(EmbeddingBag\).*'bk'.*mode='max'.*vmap"):
        resolve_engine(bags, "bk")
    assert resolve_engine(bags, "auto") == "vmap"  # neither bk nor Opacus has an exact rule
    custom = nn.Sequential(nn.Linear(3, 3), Scale())
    with pytest.raises(PrivacyConfigError, match=r"layer 1 \(Scale\).*'hooks'.*engine=vmap"):
        resolve_engine(custom, "hooks")
    assert resolve_engine(custom, "auto") == "vmap"  # no rule anywhere: the rule-free engine
    frozen = nn.Sequential(nn.Linear(3, 3), Scale().requires_grad_(False))
    assert resolve_engine(frozen, "auto") == "bk"  # frozen layers need no rule


@pytest.mark.parametrize("engine", ["hooks", "bk"])
@pytest.mark.parametrize("model_name", ["cnn", "vit", "text"])
def test_per_layer_clipping_equals_brute_force(model_name: str, engine: str) -> None:
    from dpresearch.privacy.spec import PerLayerClipping

    torch.manual_seed(0)
    model = MODELS[model_name]()
    x, y = data(model_name, 6)
    clip = 0.3
    want = brute_force_per_layer_sum(copy.deepcopy(model), x, y, clip)
    spec = PerLayerClipping(max_grad_norm=clip)
    got, _ = engine_sum(model, x, y, engine, spec.factors, chunks=2, per_layer=True)
    assert_sums_close(got, want)
    flat = brute_force_sum(copy.deepcopy(model), x, y, FixedClipping(max_grad_norm=clip).factors)
    assert any(not torch.allclose(g, f, atol=1e-6) for g, f in zip(got, flat))  # it differs


def test_per_layer_clipping_is_refused_on_ghost_and_auto_avoids_it() -> None:
    from dpresearch.privacy.spec import PrivacyConfigError
    from dpresearch.privacy.validation import resolve_engine

    with pytest.raises(PrivacyConfigError, match="clipping.engine=bk"):
        resolve_engine(group_norm_cnn(), "ghost", per_layer=True)
    assert resolve_engine(group_norm_cnn(), "auto", per_layer=True) == "bk"


class Twice(nn.Module):
    """One Linear applied twice: its per-example gradient is the sum over both uses."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(6, 6)
        self.head = nn.Linear(6, 5)

    def forward(self, x):
        return self.head(self.shared(torch.tanh(self.shared(x.flatten(1)))))


@pytest.mark.parametrize("engine", ["hooks", "bk", "vmap"])
def test_a_layer_called_twice_is_exact(engine: str) -> None:
    """bk adds the two calls' per-example gradients before the norm (it refused them before)."""
    torch.manual_seed(0)
    model, x, y = Twice(), torch.randn(5, 6), torch.randint(0, 5, (5,))
    factors = FUNCTIONS["fixed"]
    want = brute_force_sum(copy.deepcopy(model), x, y, factors)
    got, _ = engine_sum(model, x, y, engine, factors)
    assert_sums_close(got, want)


class WithUnused(nn.Module):
    """A trainable layer the forward never calls (like a BERT pooler under mean pooling)."""

    def __init__(self):
        super().__init__()
        self.used = nn.Linear(6, 5)
        self.unused = nn.Linear(6, 6)

    def forward(self, x):
        return self.used(x)


@pytest.mark.parametrize("engine", ENGINES)
def test_unused_trainable_parameters_get_exactly_zero(engine: str) -> None:
    torch.manual_seed(0)
    model, x, y = WithUnused(), torch.randn(4, 6), torch.randint(0, 5, (4,))
    got, eng = engine_sum(model, x, y, engine, FUNCTIONS["fixed"])
    want = brute_force_sum(copy.deepcopy(model).used, x, y, FUNCTIONS["fixed"])
    assert_sums_close(got[:2], want)
    assert all((g == 0).all() for g in got[2:])
    got2, _ = engine_sum(model, x, y, engine, FUNCTIONS["fixed"])  # no stale norms either
    assert_sums_close(got2[:2], want)


def test_bk_lets_go_of_each_input_so_its_peak_memory_stays_near_non_private() -> None:
    """WRN-16-4 (the reference conv workload), batch 8: the largest total of live tensors
    during one step, from the profiler's allocation events (deterministic). bk keeps each
    layer's input only until its rule has read it; when it held every input to the end of
    the backward its peak was 1.85x non-private's (1.06x now)."""
    from torch.nn import functional as F

    from dpresearch.benchmark.memory import TransientPeak
    from dpresearch.models.wrn import WideResNet
    from dpresearch.privacy.engines import make_engine

    torch.manual_seed(0)
    model = WideResNet(num_classes=10, depth=16, widen_factor=4, norm="group", groups=16)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    engine = make_engine("bk", model, FixedClipping(1.0).factors)

    def forward():
        losses = F.cross_entropy(model(x), y, reduction="none")
        return {"loss": losses.mean(), "example_losses": losses}

    def private():
        engine.run(forward)
        engine.take_sums()

    def nonprivate():
        engine._active = False  # the hooks stay registered but idle: plain autograd
        F.cross_entropy(model(x), y, reduction="sum").backward()
        model.zero_grad(set_to_none=True)

    peaks = {}
    for name, step in (("nonprivate", nonprivate), ("bk", private)):
        probe = TransientPeak(torch.device("cpu"))
        probe.start()
        step()
        peaks[name] = probe.stop()
    engine.close()
    assert peaks["bk"] <= 1.4 * peaks["nonprivate"], peaks
