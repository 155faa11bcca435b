"""Small models and data the engine, clipping, fine-tuning and compile tests share."""

from __future__ import annotations

import torch
from torch import nn

from dpresearch.models.cnn import Conv1DNet
from dpresearch.models.text import TextTransformer
from dpresearch.models.vit import ViT


def mixed_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5),
    )


def group_norm_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.GroupNorm(4, 8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False),
        nn.GroupNorm(2, 8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 5),
    )


def vit_micro() -> nn.Module:
    """The benchmark's reference ViT (depth 4, width 192, 3 heads, MLP 4x, patch 4, 32x32)."""
    return ViT(num_classes=5, in_channels=3, image_size=32, patch_size=4, dim=192, depth=4,
               heads=3)  # fmt: skip


def text_transformer() -> nn.Module:
    return TextTransformer(num_classes=5, vocab_size=50, max_length=12, dim=16, depth=2, heads=2)


def conv1d_net() -> nn.Module:
    return Conv1DNet(num_classes=5, width=8)


def data(name: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    y = torch.randint(0, 5, (n,), generator=g)
    if name == "text":  # repeated tokens (shared embedding rows) and padding (id 0)
        ids = torch.randint(1, 8, (n, 12), generator=g)
        ids[:, 9:] = 0
        return ids, y
    if name == "conv1d":
        return torch.randn(n, 1, 40, generator=g), y
    size = 32 if name == "vit" else 8
    return torch.randn(n, 3, size, size, generator=g), y


MODELS = {
    "cnn": group_norm_cnn,
    "vit": vit_micro,
    "text": text_transformer,
    "conv1d": conv1d_net,
}
