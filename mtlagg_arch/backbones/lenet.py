"""The LeNet-style network of Sener & Koltun (NeurIPS 2018) for MultiMNIST."""

from __future__ import annotations

from functools import partial

from torch import nn

from ._spec import Backbone, staged


def _conv_size(image_size: int) -> int:
    size = ((image_size - 4) // 2 - 4) // 2
    if size < 1:
        raise ValueError(f"image_size {image_size} is too small for LeNet (two 5x5 convolutions and 2x2 poolings)")
    return size


def lenet_stages(image_size: int = 28, in_channels: int = 1) -> list[nn.Module]:
    """The three stages of the shared trunk.

    ``[conv 1->10 k5, maxpool 2, ReLU]``, ``[conv 10->20 k5, Dropout2d(0.5), maxpool 2, ReLU]``,
    ``[flatten, Linear(20*s*s -> 50), ReLU]`` (``s = 4`` for 28x28 inputs, i.e. 320 features).
    """
    size = _conv_size(image_size)
    return [
        nn.Sequential(nn.Conv2d(in_channels, 10, 5), nn.MaxPool2d(2), nn.ReLU()),
        nn.Sequential(nn.Conv2d(10, 20, 5), nn.Dropout2d(), nn.MaxPool2d(2), nn.ReLU()),
        nn.Sequential(nn.Flatten(), nn.Linear(20 * size * size, 50), nn.ReLU()),
    ]


def _stage(index: int, image_size: int, in_channels: int) -> nn.Module:
    return lenet_stages(image_size, in_channels)[index]


def lenet(image_size: int = 28, in_channels: int = 1) -> Backbone:
    """The MultiMNIST trunk of Sener & Koltun, "Multi-task learning as multi-objective
    optimization", NeurIPS 2018: two conv blocks and a 50-unit fully connected layer.

    Their task head is :func:`lenet_head` (``Linear(50, 50) -> ReLU -> Linear(50, 10)``).

    Args:
        image_size: the side of the square input (28 for MultiMNIST resized, 36 for the raw canvas).
        in_channels: input channels.
    """
    _conv_size(image_size)
    factories = [partial(_stage, i, image_size, in_channels) for i in range(3)]
    return staged("lenet", factories, [10, 20, 50], [True, True, False])


def lenet_head(num_classes: int = 10, dropout: float = 0.5) -> nn.Module:
    """The task head of Sener & Koltun: ``Linear(50, 50) -> ReLU -> Dropout -> Linear(50, num_classes)``.

    Their code drops half of the hidden units in training without rescaling; this uses standard
    (inverted) dropout. It returns logits (use ``cross_entropy``; their code returns log-softmax).
    """
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    layers: list[nn.Module] = [nn.Linear(50, 50), nn.ReLU()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(50, num_classes))
    return nn.Sequential(*layers)
