"""MobileNetV1 (Howard et al. 2017) with a linear regression head (torchvision has no V1)."""

from __future__ import annotations

import torch
from torch import nn

# (output channels, stride) of the 13 depthwise-separable blocks of the original network.
_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
              (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


def _conv_bn(cin: int, cout: int, stride: int, groups: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class MobileNetV1(nn.Module):
    def __init__(self, num_outputs: int, in_channels: int = 3, width_mult: float = 1.0):
        super().__init__()
        c = lambda n: max(8, int(n * width_mult))  # noqa: E731
        layers = [_conv_bn(in_channels, c(32), 2)]
        cin = c(32)
        for cout, stride in _V1_BLOCKS:
            layers += [_conv_bn(cin, cin, stride, groups=cin), _conv_bn(cin, c(cout), 1, k=1)]
            cin = c(cout)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))
