"""The SegNet encoder-decoder of MTAN / CAGrad / Nash-MTL for NYUv2 and Cityscapes."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from torch import Tensor, nn

from .._trunk import TapTrunk
from ._spec import Backbone


def conv_layer(in_channels: int, out_channels: int) -> nn.Sequential:
    """``[3x3 conv, BN, ReLU]``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)
    )


def _convs(channels: int, count: int) -> nn.Sequential:
    return nn.Sequential(*(conv_layer(channels, channels) for _ in range(count)))


def xavier_init(module: nn.Module) -> None:
    """Xavier-normal convolution / linear weights, zero biases, unit batch-norm scales (MTAN's init)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SegNet(TapTrunk):
    """SegNet: five encoder stages (convolutions, 2x2 max-pooling with indices) and five decoder
    stages (max-unpooling with those indices, convolutions), full-resolution output.

    The network of Liu et al.'s MTAN code, used by the CAGrad, Nash-MTL and FAMO NYUv2 /
    Cityscapes experiments (``filters = (64, 128, 256, 512, 512)``; 1, 1, 2, 2, 2 extra 3x3
    convolutions per encoder stage; Xavier init). ``forward`` returns the last decoder features
    (``filters[0]`` channels); inputs need a height and width divisible by 32.

    As a :class:`~mtlagg_arch._trunk.TapTrunk` it gives MTAN its ten stages: encoder stage ``i``
    gives ``u`` = its first convolution's output and ``p`` = its last (before pooling); decoder
    stage ``j`` gives ``u`` = the unpooled input and ``p`` = its output. The blocks between MTAN's
    attention stages are the authors' (3x3 convolution, then max-pooling in the encoder;
    bilinear up-sampling, then 3x3 convolution in the decoder).

    Args:
        filters: channels of the five stages.
        in_channels: input channels.
    """

    def __init__(self, filters: Sequence[int] = (64, 128, 256, 512, 512), in_channels: int = 3) -> None:
        super().__init__()
        f = list(filters)
        if len(f) != 5 or any(not isinstance(c, int) or c < 1 for c in f):
            raise ValueError(f"filters must be five positive ints, got {filters!r}")
        self.filters = f
        extra = [1, 1, 2, 2, 2]
        self.encoder_blocks = nn.ModuleList(conv_layer(in_channels if i == 0 else f[i - 1], f[i]) for i in range(5))
        self.encoder_convs = nn.ModuleList(_convs(f[i], extra[i]) for i in range(5))
        # decoder index i runs 4 -> 0; block i maps f[i] -> f[i-1] (f[0] -> f[0] for i = 0)
        self.decoder_blocks = nn.ModuleList(conv_layer(f[i], f[max(i - 1, 0)]) for i in range(5))
        self.decoder_convs = nn.ModuleList(_convs(f[max(i - 1, 0)], extra[i]) for i in range(5))
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, stride=2)
        decoder_pairs = [(f[i], f[max(i - 1, 0)]) for i in range(4, -1, -1)]
        self.tap_channels = [(c, c) for c in f] + decoder_pairs
        self.tap_spatial = [True] * 10
        xavier_init(self)

    def forward_taps(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        taps = []
        indices = []
        h = x
        for i in range(5):
            u = self.encoder_blocks[i](h)
            p = self.encoder_convs[i](u)
            taps.append((u, p))
            h, index = self.pool(p)
            indices.append(index)
        for i in range(4, -1, -1):
            u = self.unpool(h, indices[i])
            h = self.decoder_convs[i](self.decoder_blocks[i](u))
            taps.append((u, h))
        return taps

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_taps(x)[-1][1]

    def init_module(self, module: nn.Module) -> None:
        xavier_init(module)

    def make_transfer(self, stage: int) -> nn.Module:
        f = self.filters
        channels = [p for _, p in self.tap_channels]
        up = partial(nn.Upsample, scale_factor=2, mode="bilinear", align_corners=True)
        if stage < 4:
            block = nn.Sequential(conv_layer(f[stage], f[stage + 1]), nn.MaxPool2d(2, stride=2))
        elif stage == 4:
            block = nn.Sequential(
                conv_layer(f[4], f[4]), nn.MaxPool2d(2, stride=2), up(), conv_layer(f[4], channels[5])
            )
        elif stage < 9:
            block = nn.Sequential(up(), conv_layer(channels[stage], channels[stage + 1]))
        else:
            raise ValueError(f"SegNet has 10 MTAN stages, so no transfer after stage {stage}")
        xavier_init(block)
        return block


def segnet(filters: Sequence[int] = (64, 128, 256, 512, 512), in_channels: int = 3) -> Backbone:
    """The SegNet backbone (see :class:`SegNet`) for HPS, the expert-based architectures and MTAN.

    Its decoder needs the encoder's pooling indices, so it is not split into stages: CrossStitch,
    PLE and LTB need a staged backbone (e.g. :func:`~mtlagg_arch.backbones.resnet` with
    ``dilated=True``).
    """
    f = list(filters)
    if len(f) != 5 or any(not isinstance(c, int) or c < 1 for c in f):
        raise ValueError(f"filters must be five positive ints, got {filters!r}")
    build = partial(SegNet, tuple(f), in_channels)
    return Backbone("segnet", encoder_factory=build, trunk_factory=build, out_channels=f[0])
