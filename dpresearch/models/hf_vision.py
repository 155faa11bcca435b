"""Vision backbones by name (Hugging Face ViT / ResNet / ..., or timm when it is installed)
as classifiers with a new linear ``head``.

DP needs per-example gradients, which BatchNorm destroys (it mixes the examples of a batch):
with ``norm=group`` (the default) every BatchNorm2d is replaced by a GroupNorm over the same
channels, keeping the pretrained affine weights (its running statistics have no GroupNorm
counterpart). Pretrained weights that cannot be had are an error, never a silent random init.
"""

from __future__ import annotations

import torch
from torch import nn

from dpresearch.models.hf import load_encoder


def batch_norm_to_group_norm(model: nn.Module, groups: int = 32) -> nn.Module:
    """Replace every BatchNorm2d in place by GroupNorm(g, C) with g = gcd(groups, C)."""
    import math

    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d):
            c = child.num_features
            norm = nn.GroupNorm(math.gcd(groups, c), c, eps=child.eps, affine=child.affine)
            if child.affine:
                with torch.no_grad():
                    norm.weight.copy_(child.weight)
                    norm.bias.copy_(child.bias)
            setattr(model, name, norm)
        else:
            batch_norm_to_group_norm(child, groups)
    return model


def _check_norm(norm: str) -> None:
    if norm not in ("group", "batch"):
        raise ValueError(f"model.norm must be group or batch, got {norm!r}")


class HFImageClassifier(nn.Module):
    """A Hugging Face vision backbone (``AutoModel``): the class token for ViTs, the pooled
    features for CNNs, then ``head``."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        name: str = "google/vit-base-patch16-224",
        pretrained: bool = True,
        architecture: str | None = None,
        config_overrides: dict | None = None,
        norm: str = "group",
        groups: int = 32,
    ):
        super().__init__()
        _check_norm(norm)
        overrides = {"num_channels": in_channels, **(config_overrides or {})}
        self.backbone = load_encoder(name, pretrained, architecture, overrides)
        if norm == "group":
            batch_norm_to_group_norm(self.backbone, groups)
        config = self.backbone.config
        self._vit = hasattr(config, "hidden_size") and hasattr(config, "patch_size")
        if self._vit and getattr(self.backbone, "pooler", None) is not None:
            self.backbone.pooler = None  # unused: the class token goes to the head
        width = config.hidden_size if self._vit else config.hidden_sizes[-1]
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.backbone(pixel_values=x)
        if self._vit:
            return self.head(out.last_hidden_state[:, 0])
        return self.head(out.pooler_output.flatten(1))


class TimmClassifier(nn.Module):
    """Any timm model by name (``timm.create_model``); timm needs torchvision:
    ``pip install -e '.[vision]'`` (on a CPU-only torch, install a matching torchvision)."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        name: str = "resnet18",
        pretrained: bool = True,
        norm: str = "group",
        groups: int = 32,
        **kwargs,
    ):
        super().__init__()
        _check_norm(norm)
        try:
            import timm
        except ImportError as err:
            raise ImportError(
                f"model=timm needs timm and torchvision ({err}); pip install -e '.[vision]', "
                "or use model=hf_vision, which needs neither"
            ) from None
        try:
            self.net = timm.create_model(
                name, pretrained=pretrained, num_classes=0, in_chans=in_channels, **kwargs
            )
        except Exception as err:  # unknown name, or weights unreachable: say which
            raise ValueError(
                f"model.name={name}: timm could not build it ({type(err).__name__}: {err}); "
                "check the name (timm.list_models()), connect to download weights, or set "
                "model.pretrained=false"
            ) from None
        if norm == "group":
            batch_norm_to_group_norm(self.net, groups)
        self.head = nn.Linear(self.net.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x))
