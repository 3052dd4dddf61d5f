"""Multi-layer perceptron backbone."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from torch import nn

from ._spec import Backbone, staged


def mlp_stage(in_features: int, out_features: int, dropout: float = 0.0) -> nn.Sequential:
    """``[Linear, ReLU]`` (and ``Dropout`` when ``dropout > 0``)."""
    layers: list[nn.Module] = [nn.Linear(in_features, out_features), nn.ReLU()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def mlp(in_features: int, hidden: Sequence[int] = (256, 128), dropout: float = 0.0) -> Backbone:
    """An MLP, one stage per hidden layer (``Linear -> ReLU [-> Dropout]``).

    Args:
        in_features: the input size.
        hidden: the width of each hidden layer (one stage each).
        dropout: dropout after each ReLU (0: none).
    """
    if not isinstance(in_features, int) or in_features < 1:
        raise ValueError(f"in_features must be a positive int, got {in_features!r}")
    widths = list(hidden)
    if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(f"hidden must be a non-empty sequence of positive ints, got {hidden!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    sizes = [in_features, *widths]
    factories = [partial(mlp_stage, sizes[i], sizes[i + 1], dropout) for i in range(len(widths))]
    return staged("mlp", factories, widths, [False] * len(widths))
