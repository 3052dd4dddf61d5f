"""Build any architecture by name on any :class:`~mtlagg_arch.backbones.Backbone`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ._base import MultiTaskModel
from .backbones import Backbone
from .cgc import CGC
from .cross_stitch import CrossStitch
from .dselect_k import DSelectK
from .hps import HPS
from .ltb import LTB
from .mmoe import MMoE
from .mtan import MTAN
from .ple import PLE

#: canonical name -> class
ARCHITECTURES: dict[str, type[MultiTaskModel]] = {
    "hps": HPS,
    "cross_stitch": CrossStitch,
    "mmoe": MMoE,
    "cgc": CGC,
    "ple": PLE,
    "mtan": MTAN,
    "ltb": LTB,
    "dselect_k": DSelectK,
}

_STAGED = {"cross_stitch", "ple", "ltb"}


def canonical_name(name: str) -> str:
    """``"Cross-Stitch"``, ``"crossstitch"``, ``"DSelect_k"`` ... -> the key of :data:`ARCHITECTURES`."""
    if not isinstance(name, str):
        raise TypeError(f"the architecture name must be a str, got {type(name).__name__}")
    key = name.lower().replace("-", "").replace("_", "").replace(" ", "")
    for canonical in ARCHITECTURES:
        if canonical.replace("_", "") == key:
            return canonical
    raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")


def build_architecture(
    name: str,
    backbone: Backbone,
    heads: Mapping[str, nn.Module],
    *,
    multi_input: bool = False,
    **options: Any,
) -> MultiTaskModel:
    """Build architecture ``name`` on ``backbone`` with these ``heads``.

    Args:
        name: one of :data:`ARCHITECTURES` (case, ``-`` and ``_`` ignored).
        backbone: a :class:`~mtlagg_arch.backbones.Backbone` (HPS, MMoE, CGC and DSelect-k use its
            whole encoder as the shared encoder / expert; CrossStitch, PLE and LTB its stages;
            MTAN its trunk).
        heads: one module per task; each reads what the architecture gives it (the encoder's
            output, or the last stage's, of ``backbone.out_channels`` channels).
        multi_input: each task has its own input batch.
        **options: the architecture's own keyword arguments (e.g. ``num_experts=4``). Expert-based
            architectures default to ``gate_input="experts"`` with ``gate_in_features`` from the
            backbone, which works for any input shape.
    """
    if not isinstance(backbone, Backbone):
        raise TypeError(f"backbone must be a mtlagg_arch.backbones.Backbone, got {type(backbone).__name__}")
    key = canonical_name(name)
    if key in _STAGED:
        backbone.require_stages(ARCHITECTURES[key].__name__)
    return ARCHITECTURES[key].from_backbone(backbone, heads, multi_input=multi_input, **options)  # type: ignore[attr-defined]
