"""ResNet-18/34/50/101 (He et al., CVPR 2016), split into stages, optionally dilated.

Parameter names follow torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layer2.0.downsample.0``), so an ImageNet ``state_dict`` saved from torchvision loads with
``weights_path=`` (its ``fc.*`` entries are ignored). Nothing is downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial

import torch
from torch import Tensor, nn

from ._spec import Backbone, staged


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; in a dilated layer's first block the first one (which had the stride)
    uses ``entry_dilation``."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
        entry_dilation: int | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride, entry_dilation or dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1, 3x3 (strided, torchvision's "v1.5"), 1x1 convolutions; in a dilated layer's first block
    the 3x3 one uses ``entry_dilation``."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
        entry_dilation: int | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, entry_dilation or dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_LAYERS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3)),
           101: (Bottleneck, (3, 4, 23, 3))}  # fmt: skip


class ResNet(nn.Module):
    """A ResNet without its average pooling and classifier: ``forward`` returns layer4's features.

    Args:
        depth: 18, 34, 50 or 101.
        dilated: replace the strides of layer3 and layer4 by dilations 2 and 4 (output stride 8
            instead of 32, as in DeepLab / LibMTL's ``resnet_dilated``); the first block of each
            dilated layer uses half the dilation.
        width: the channels of the stem (64 in the paper; smaller values for tests).
        in_channels: input channels.
    """

    def __init__(self, depth: int = 50, *, dilated: bool = False, width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        if depth not in _LAYERS:
            raise ValueError(f"depth must be one of {sorted(_LAYERS)}, got {depth!r}")
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}")
        block, counts = _LAYERS[depth]
        self.depth = depth
        self.dilated = dilated
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, counts[0])
        self.layer2 = self._make_layer(block, width * 2, counts[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, counts[2], stride=2, dilation=2 if dilated else 1)
        self.layer4 = self._make_layer(block, width * 8, counts[3], stride=2, dilation=4 if dilated else 1)
        self.feature_dim = width * 8 * block.expansion
        self.stage_channels = [width * block.expansion * m for m in (1, 2, 4, 8)]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1, dilation: int = 1
    ) -> nn.Sequential:
        if dilation > 1:
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        entry = max(dilation // 2, 1)  # the first block's strided convolution: half the dilation
        layers = [block(self.inplanes, planes, stride, downsample, dilation, entry)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def stages(self) -> list[nn.Sequential]:
        """Four stages sharing this network's modules: ``[stem + layer1 blocks]``, layer2, layer3, layer4.

        Each stage is a flat ``nn.Sequential`` whose last module is the layer's last block (what
        MTAN's attention multiplies).
        """
        stem = [self.conv1, self.bn1, self.relu, self.maxpool]
        return [nn.Sequential(*stem, *self.layer1), self.layer2, self.layer3, self.layer4]

    def load_weights(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load a torchvision-style ``state_dict`` (``fc.*`` ignored); raises on any other mismatch."""
        own = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        result = self.load_state_dict(own, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"the ResNet-{self.depth} weights do not match: missing {result.missing_keys[:5]}"
                f"{'...' if len(result.missing_keys) > 5 else ''}, unexpected {result.unexpected_keys[:5]}"
                f"{'...' if len(result.unexpected_keys) > 5 else ''}"
            )


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """A ``state_dict`` from a file (a plain ``state_dict``, or a checkpoint with ``"state_dict"``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights_path {os.fspath(path)!r} is not a file (nothing is downloaded)")
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{os.fspath(path)!r} does not hold a state_dict")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def build_resnet(
    depth: int = 50,
    *,
    dilated: bool = False,
    width: int = 64,
    in_channels: int = 3,
    weights: Mapping[str, Tensor] | None = None,
) -> ResNet:
    net = ResNet(depth, dilated=dilated, width=width, in_channels=in_channels)
    if weights is not None:
        net.load_weights(weights)
    return net


def _stage(index: int, **kwargs: object) -> nn.Module:
    return build_resnet(**kwargs).stages()[index]  # type: ignore[arg-type]


def resnet(
    depth: int = 50,
    *,
    dilated: bool = False,
    width: int = 64,
    in_channels: int = 3,
    weights_path: str | os.PathLike[str] | None = None,
) -> Backbone:
    """A ResNet backbone in four stages (stem + layer1, layer2, layer3, layer4).

    Args:
        depth: 18, 34, 50 or 101.
        dilated: output stride 8 (layer3 / layer4 dilated), for dense prediction.
        width: stem channels (64 in the paper).
        in_channels: input channels.
        weights_path: a torchvision-style ImageNet ``state_dict`` file to start from (read once;
            every stage or copy built from this backbone starts from these weights).
    """
    weights = load_state_dict_file(weights_path) if weights_path is not None else None
    options = {"depth": depth, "dilated": dilated, "width": width, "in_channels": in_channels, "weights": weights}
    probe = build_resnet(**options)  # type: ignore[arg-type]  # fails now on bad arguments or weights
    channels = probe.stage_channels
    del probe
    return staged(
        f"resnet{depth}{'_dilated' if dilated else ''}",
        [partial(_stage, i, **options) for i in range(4)],
        channels,
        [True] * 4,
        encoder_factory=partial(build_resnet, **options),
    )
