"""A compact Vision Transformer (Dosovitskiy et al.) built from Linear and LayerNorm only.

Attention is written with plain Linear layers (not nn.MultiheadAttention) so that every
trainable layer has a per-example gradient rule in every DP engine.
"""

from __future__ import annotations

import torch
from torch import nn

from dpresearch.models.layers import ClassToken, PositionEmbedding


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.dim={dim} must be divisible by model.heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 32,
        patch_size: int = 4,
        dim: int = 192,
        depth: int = 4,
        heads: int = 3,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(
                f"model.image_size={image_size} must be divisible by model.patch_size={patch_size}"
            )
        self.patch_size = patch_size
        tokens = (image_size // patch_size) ** 2
        self.patch_embed = nn.Linear(in_channels * patch_size**2, dim)
        self.cls_token = ClassToken(dim)
        self.pos_embed = PositionEmbedding(tokens + 1, dim)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        b, c, h, w = x.shape
        patches = x.unfold(2, p, p).unfold(3, p, p)  # b, c, h/p, w/p, p, p
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(b, (h // p) * (w // p), c * p * p)
        x = self.pos_embed(self.cls_token(self.patch_embed(patches)))
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])
