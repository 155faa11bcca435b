"""Small convolutional classifiers for the offline datasets (digits, MNIST-1D, MNIST)."""

from __future__ import annotations

from torch import nn

from dpresearch.models.layers import norm2d


class SmallCNN(nn.Module):
    """Three 3x3 conv blocks with GroupNorm, global average pooling, a linear head.

    Works for any image size >= 4 (digits' 8x8 up to CIFAR's 32x32).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        width: int = 32,
        norm: str = "group",
        groups: int = 8,
    ):
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm == "none"),
                norm2d(norm, c_out, groups),
                nn.ReLU(),
            ]

        self.features = nn.Sequential(
            *block(in_channels, width),
            *block(width, 2 * width),
            nn.AvgPool2d(2),
            *block(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


class Conv1DNet(nn.Module):
    """1-D convolutional classifier for sequences such as MNIST-1D (length 40)."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 32, groups: int = 8):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(3):
            layers += [
                nn.Conv1d(c, width, 5, stride=2 if i else 1, padding=2),
                nn.GroupNorm(min(groups, width), width),
                nn.ReLU(),
            ]
            c = width
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(width * 10, num_classes)  # 40 -> 20 -> 10 positions

    def forward(self, x):
        return self.head(self.features(x))
