"""A small text transformer classifier (token ids -> class), built from the layers every DP
engine supports: Embedding, a learned position embedding, the ViT's blocks, LayerNorm, Linear."""

from __future__ import annotations

import torch
from torch import nn

from dpresearch.models.layers import PositionEmbedding
from dpresearch.models.vit import Block


class TextTransformer(nn.Module):
    def __init__(
        self,
        num_classes: int,
        vocab_size: int = 1000,
        max_length: int = 64,
        dim: int = 64,
        depth: int = 2,
        heads: int = 2,
        mlp_ratio: float = 4.0,
        padding_idx: int | None = 0,
    ):
        super().__init__()
        self.padding_idx = padding_idx
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=padding_idx)
        self.pos_embed = PositionEmbedding(max_length, dim)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] != self.pos_embed.weight.shape[1]:
            raise ValueError(
                f"sequences must be padded to model.max_length={self.pos_embed.weight.shape[1]}"
                f", got length {ids.shape[1]}"
            )
        x = self.norm(self.blocks(self.pos_embed(self.embed(ids))))
        if self.padding_idx is None:
            return self.head(x.mean(1))
        keep = (ids != self.padding_idx).unsqueeze(-1).to(x.dtype)  # mean over real tokens
        return self.head((x * keep).sum(1) / keep.sum(1).clamp(min=1))
