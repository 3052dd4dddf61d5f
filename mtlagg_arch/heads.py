"""Task heads used by the standard benchmarks (any ``nn.Module`` can be a head)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def segnet_head(out_channels: int, channels: int = 64) -> nn.Sequential:
    """MTAN's SegNet prediction layer: ``3x3 conv (channels -> channels) -> 1x1 conv (-> out_channels)``."""
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.Conv2d(channels, out_channels, 1))


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = 0 if kernel == 1 else dilation
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (Chen et al., DeepLabv3): a 1x1 branch, one 3x3 branch per
    rate, an image-pooling branch; concatenated and projected to ``channels`` (with dropout 0.5)."""

    def __init__(self, in_channels: int, rates: Sequence[int] = (12, 24, 36), channels: int = 256) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(in_channels, channels)] + [_conv_bn_relu(in_channels, channels, 3, r) for r in rates]
        )
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv_bn_relu(in_channels, channels))
        self.project = nn.Sequential(_conv_bn_relu(channels * (len(rates) + 2), channels), nn.Dropout(0.5))

    def forward(self, x: Tensor) -> Tensor:
        outputs = [branch(x) for branch in self.branches]
        pooled = self.image_pool(x)
        outputs.append(F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False))
        return self.project(torch.cat(outputs, dim=1))


class DeepLabHead(nn.Sequential):
    """DeepLabv3 head (LibMTL's NYUv2 / Cityscapes head on a dilated ResNet):
    ``ASPP(rates 12/24/36) -> 3x3 conv, BN, ReLU -> 1x1 conv (-> out_channels)``.

    Predictions are at the backbone's resolution (1/8 with a dilated ResNet): up-sample them to
    the label size in the loss.
    """

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int] = (12, 24, 36), channels: int = 256):
        super().__init__(
            ASPP(in_channels, rates, channels),
            _conv_bn_relu(channels, channels, 3),
            nn.Conv2d(channels, out_channels, 1),
        )
