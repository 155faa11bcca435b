"""Scopes train exactly what they name, and DP clipping stays exact under each of them."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from torch.nn import functional as F

from dpresearch.finetune import BiasOnly, Full, HeadOnly, LoRA
from dpresearch.privacy.engines import make_engine
from dpresearch.privacy.spec import FixedClipping
from tests.conftest import dp_strategy, fit_batches
from tests.helpers.models import data, text_transformer, vit_micro
from tests.helpers.references import assert_sums_close, brute_force_sum, engine_sum

SCOPES = {
    "full": Full,
    "head_only": HeadOnly,
    "bias_only": BiasOnly,
    "lora": partial(LoRA, r=2),
}


def expected_trainable(scope: str, name: str) -> bool:
    if scope == "full":
        return True
    head = name.startswith("head.")
    if scope == "head_only":
        return head
    if scope == "bias_only":
        return head or name.endswith(".bias")
    return head or ".lora_A." in name or ".lora_B." in name  # lora


@pytest.mark.parametrize("scope", SCOPES)
def test_scope_trains_exactly_what_it_names(scope: str) -> None:
    torch.manual_seed(0)
    model = SCOPES[scope]().apply(text_transformer())
    names = {n: p.requires_grad for n, p in model.named_parameters()}
    assert names == {n: expected_trainable(scope, n) for n in names}
    assert any(names.values()) and (scope == "full" or not all(names.values()))
    x, y = data("text", 8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit_batches(model, x, y, [list(range(8))], dp_strategy(0.5, 1.0, 8, engine="bk"))
    for n, p in model.named_parameters():
        if names[n]:
            assert not torch.equal(p.detach(), before[n]), n  # noise alone moves it
        else:
            assert torch.equal(p.detach(), before[n]), n  # frozen: bit-identical


@pytest.mark.parametrize("engine", ["hooks", "ghost", "bk"])
@pytest.mark.parametrize("scope", SCOPES)
def test_clipping_exact_under_every_scope(scope: str, engine: str) -> None:
    torch.manual_seed(0)
    model = SCOPES[scope]().apply(text_transformer())
    if scope == "lora":  # LoRA's B starts at zero; move it so A's gradient is not zero
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                torch.nn.init.normal_(p, std=0.5)
    x, y = data("text", 6)
    factors = FixedClipping(max_grad_norm=0.05).factors
    want = brute_force_sum(copy.deepcopy(model), x, y, factors)
    got, _ = engine_sum(model, x, y, engine, factors, chunks=2)
    assert len(got) == len(want) == sum(p.requires_grad for p in model.parameters())
    assert_sums_close(got, want)


def kept_inputs(model, x, y) -> dict[str, bool]:
    """Which layers' input activations the bk engine holds at the end of the forward pass."""
    eng = make_engine("bk", model, FixedClipping().factors)
    try:
        eng.run(lambda: {"example_losses": F.cross_entropy(model(x), y, reduction="none")})
    finally:
        eng.close()
    return eng.kept_inputs


def test_bias_only_keeps_no_input_activations_for_frozen_weights() -> None:
    x, y = data("vit", 4)
    full = kept_inputs(Full().apply(vit_micro()), x, y)
    bias = kept_inputs(BiasOnly().apply(vit_micro()), x, y)
    assert full["blocks.0.mlp.0"] and full["blocks.0.attn.qkv"]  # full keeps them
    assert set(bias) >= {"blocks.0.mlp.0", "blocks.0.attn.qkv", "blocks.0.norm1"}
    assert not any(held for path, held in bias.items() if path != "head")
    assert bias["head"]  # the head's weight trains, so its input is kept


def test_missing_head_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="finetune.head"):
        HeadOnly(head=["classifier_xyz"]).apply(text_transformer())
