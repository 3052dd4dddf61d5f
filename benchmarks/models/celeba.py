"""The CelebA network of FAMO / FairGrad / MTLlib: a 7-layer CNN trunk and 40 linear heads.

Trunk: 7 conv 3x3 layers (64, 128, 128, 256, 256, 512, 512 channels) each with BatchNorm and ReLU,
max-pooling after layers 1, 3 and 5; global average pooling; then 2 x [Linear(512, 512, no bias),
BatchNorm1d, ReLU]: the 512-d shared representation. Heads: Linear(512, 1) per attribute (logits; the
loss applies the sigmoid). ``width`` scales every channel count (1.0 = the paper's network).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from benchmarks.datasets.celeba import ATTRIBUTES

CHANNELS = (64, 128, 128, 256, 256, 512, 512)
POOL_AFTER = (0, 2, 4)


class CelebAEncoder(nn.Module):
    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        chans = [max(4, round(c * width)) for c in CHANNELS]
        layers: list[nn.Module] = []
        prev = 3
        for k, c in enumerate(chans):
            layers += [nn.Conv2d(prev, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if k in POOL_AFTER:
                layers.append(nn.MaxPool2d(2))
            prev = c
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = prev
        self.fc = nn.Sequential(
            nn.Linear(prev, prev, bias=False),
            nn.BatchNorm1d(prev),
            nn.ReLU(inplace=True),
            nn.Linear(prev, prev, bias=False),
            nn.BatchNorm1d(prev),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class CelebANet(nn.Module):
    """``forward(images) -> {attribute: (B,) logits}``."""

    def __init__(self, tasks: Sequence[str] = ATTRIBUTES, width: float = 1.0) -> None:
        super().__init__()
        self.encoder = CelebAEncoder(width)
        self.heads = nn.ModuleDict({t: nn.Linear(self.encoder.out_dim, 1) for t in tasks})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.encoder(x)
        return {t: head(z).squeeze(-1) for t, head in self.heads.items()}
