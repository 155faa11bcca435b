"""Wide ResNet (Zagoruyko & Komodakis) with GroupNorm: the standard DP CIFAR-10 model.

WRN-16-4 with GroupNorm(16) is the architecture of De et al. (2022), "Unlocking high-accuracy
differentially private image classification through scale".
"""

from __future__ import annotations

from torch import nn

from dpresearch.models.layers import norm2d


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, groups: int):
        super().__init__()
        self.norm1 = norm2d(norm, c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm2 = norm2d(norm, c_out, groups)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.act = nn.ReLU()
        self.shortcut = (
            nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride != 1 or c_in != c_out else None
        )

    def forward(self, x):
        out = self.act(self.norm1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.act(self.norm2(out)))
        return out + skip


class WideResNet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        depth: int = 16,
        widen_factor: int = 4,
        norm: str = "group",
        groups: int = 16,
    ):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"model.depth must be 6n+4 (10, 16, 22, 28, 40), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)]
        for stage in range(3):
            for i in range(n):
                c_in = widths[stage] if i == 0 else widths[stage + 1]
                stride = 2 if (stage > 0 and i == 0) else 1
                layers.append(_Block(c_in, widths[stage + 1], stride, norm, groups))
        layers += [
            norm2d(norm, widths[3], groups),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        ]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        return self.head(self.features(x))
