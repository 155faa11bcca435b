"""Vision backbones by name: HF ViT and ResNet (BatchNorm -> GroupNorm) under DP, exact
per-example clipping under every scope; clear errors for unreachable weights and for timm."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dpresearch.finetune import BiasOnly, Full, LoRA
from dpresearch.models.hf import PretrainedUnavailable
from dpresearch.models.hf_vision import HFImageClassifier, TimmClassifier
from dpresearch.privacy.spec import FixedClipping
from dpresearch.privacy.validation import resolve_engine
from tests.helpers.references import assert_sums_close, brute_force_sum, engine_sum

SIZES = {
    "vit": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 32, "image_size": 8, "patch_size": 4},
    "resnet": {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1]},
}  # fmt: skip


def tiny(architecture: str) -> HFImageClassifier:
    torch.manual_seed(0)
    return HFImageClassifier(4, in_channels=3, name=architecture, pretrained=False,
                             architecture=architecture, config_overrides=SIZES[architecture],
                             groups=4).train()  # fmt: skip


@pytest.mark.parametrize("scope", [Full(), BiasOnly(), LoRA(r=2)], ids=["full", "bias", "lora"])
@pytest.mark.parametrize("architecture", ["vit", "resnet"])
def test_bk_exact_on_hf_vision_backbones(architecture: str, scope) -> None:
    if architecture == "resnet" and scope.name == "lora":
        scope = LoRA(r=2, target_modules=["convolution"])  # convs: LoRA's Conv2d adapters
    model = scope.apply(tiny(architecture))
    for n, p in model.named_parameters():
        if ".lora_B." in n:
            torch.nn.init.normal_(p, std=0.5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert resolve_engine(model, "auto") == "bk"
    size = 8 if architecture == "vit" else 16
    x, y = torch.randn(5, 3, size, size), torch.randint(0, 4, (5,))
    factors = FixedClipping(max_grad_norm=0.1).factors
    want = brute_force_sum(copy.deepcopy(model), x, y, factors)
    got, _ = engine_sum(model, x, y, "bk", factors)
    assert_sums_close(got, want)


def test_batch_norm_becomes_group_norm_keeping_affine_weights() -> None:
    from dpresearch.models.hf_vision import batch_norm_to_group_norm

    bn = nn.BatchNorm2d(12)
    nn.init.normal_(bn.weight)
    net = batch_norm_to_group_norm(nn.Sequential(nn.Conv2d(3, 12, 3), bn), groups=8)
    assert isinstance(net[1], nn.GroupNorm) and net[1].num_groups == 4  # gcd(8, 12)
    assert torch.equal(net[1].weight, bn.weight)


def test_unreachable_pretrained_vision_weights_are_a_clear_error() -> None:
    with pytest.raises(PretrainedUnavailable, match="model.pretrained=false"):
        HFImageClassifier(10, name="google/vit-base-patch16-224")


def test_timm_without_torchvision_says_what_to_install() -> None:
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install -e '.\[vision\]'.*hf_vision"):
            TimmClassifier(10, pretrained=False)
    else:
        model = TimmClassifier(10, name="resnet18", pretrained=False)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
