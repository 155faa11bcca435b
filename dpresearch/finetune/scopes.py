"""A scope decides which parameters are trained (``requires_grad``); every DP engine then works
on the trainable ones only, and bk keeps no input activations for frozen-weight layers.

The classification head (the new layer of a pretrained model) is found by name: the first
module whose attribute name is in ``head`` (default: head, classifier, score, fc).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from torch import nn

log = logging.getLogger(__name__)

HEAD_NAMES = ("head", "classifier", "score", "fc")

# LoRA targets by architecture, tried in order: the first set the model has wins.
LORA_TARGETS = (
    ("query", "value"),  # BERT family (MiniLM, BERT, RoBERTa)
    ("q_proj", "v_proj"),  # Llama, OPT, ...
    ("c_attn",),  # GPT-2
    ("qkv",),  # our ViT and text transformer, timm ViTs
)


def parameter_counts(model: nn.Module) -> dict[str, float]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": trainable / total if total else 0.0,
    }


def find_head(model: nn.Module, names: tuple[str, ...] | list[str] = HEAD_NAMES) -> nn.Module:
    """The classification head: the first module named one of ``names``."""
    for wanted in names:
        for path, module in model.named_modules():
            if path.rsplit(".", 1)[-1] == wanted:
                return module
    children = [name for name, _ in model.named_children()]
    raise ValueError(
        f"no classification head named one of {list(names)} in {type(model).__name__} "
        f"(its children: {children}); set finetune.head=[<name>]"
    )


@dataclass
class Scope:
    name = "scope"

    def apply(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def _log(self, model: nn.Module) -> nn.Module:
        counts = parameter_counts(model)
        log.info(
            "finetune=%s trains %d of %d parameters (%.4f%%)",
            self.name,
            counts["trainable_params"],
            counts["total_params"],
            100 * counts["trainable_fraction"],
        )
        return model


@dataclass
class Full(Scope):
    """Train every parameter."""

    name = "full"

    def apply(self, model: nn.Module) -> nn.Module:
        model.requires_grad_(True)
        return self._log(model)


@dataclass
class HeadOnly(Scope):
    """Linear probing: only the classification head trains."""

    head: list[str] = field(default_factory=lambda: list(HEAD_NAMES))

    name = "head_only"

    def apply(self, model: nn.Module) -> nn.Module:
        model.requires_grad_(False)
        find_head(model, self.head).requires_grad_(True)
        return self._log(model)


@dataclass
class BiasOnly(HeadOnly):
    """DP-BiTFiT (Bu et al.): every bias (Linear, Conv, LayerNorm/GroupNorm) plus the head."""

    name = "bias_only"

    def apply(self, model: nn.Module) -> nn.Module:
        model.requires_grad_(False)
        for path, p in model.named_parameters():
            if path.rsplit(".", 1)[-1] == "bias":
                p.requires_grad_(True)
        find_head(model, self.head).requires_grad_(True)
        return self._log(model)


@dataclass
class LoRA(HeadOnly):
    """LoRA adapters (peft) on ``target_modules`` plus the head; the rest is frozen.

    ``target_modules=null`` picks per architecture (LORA_TARGETS); ``all-linear`` is peft's
    every-Linear option. Adapters are plain Linear layers, so every DP engine trains them.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | str | None = None

    name = "lora"

    def targets(self, model: nn.Module) -> list[str] | str:
        if self.target_modules is not None:
            return self.target_modules
        names = {path.rsplit(".", 1)[-1] for path, _ in model.named_modules()}
        for candidate in LORA_TARGETS:
            if set(candidate) <= names:
                return list(candidate)
        return "all-linear"

    def apply(self, model: nn.Module) -> nn.Module:
        from dpresearch.hf_hub import require

        peft = require("peft", "finetune=lora")
        LoraConfig, inject_adapter_in_model = peft.LoraConfig, peft.inject_adapter_in_model  # noqa: N806

        if self.r < 1:
            raise ValueError(f"finetune.r must be >= 1, got {self.r}")
        head = find_head(model, self.head)
        head_paths = {path for path, m in model.named_modules() if m is head}
        targets = self.targets(model)
        config = LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=targets,
            exclude_modules=list(head_paths),
        )
        try:
            model = inject_adapter_in_model(config, model)
        except ValueError as err:
            raise ValueError(f"finetune=lora with target_modules={targets}: {err}") from None
        model.requires_grad_(False)
        for path, p in model.named_parameters():
            if ".lora_A." in path or ".lora_B." in path:
                p.requires_grad_(True)
        head.requires_grad_(True)
        log.info("finetune=lora: rank %d adapters on %s", self.r, targets)
        return self._log(model)
