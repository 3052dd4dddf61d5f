"""mtlagg_arch: the multi-task architectures, usable with every ``mtlagg`` aggregator.

Every model maps an input to ``{task: prediction}`` and splits its parameters cleanly::

    model = MTAN(stages, heads, channels=[...])
    out = model(x)
    losses = [loss_fn[t](out[t], y[t]) for t in model.task_names]
    mtlagg.backward(losses, model.shared_parameters(), aggregator)                     # exact
    mtlagg.backward(losses, model.shared_parameters(), aggregator, features=model.representation)
"""

from . import backbones, heads
from ._base import MultiTaskModel
from ._gates import DSelectKGate, SoftmaxGate, smooth_step
from ._registry import ARCHITECTURES, build_architecture, canonical_name
from ._trunk import SequentialTrunk, TapTrunk
from .cgc import CGC
from .cross_stitch import CrossStitch
from .dselect_k import DSelectK
from .hps import HPS
from .ltb import LTB
from .mmoe import MMoE
from .mtan import MTAN
from .ple import PLE

__all__ = [
    "ARCHITECTURES",
    "CGC",
    "HPS",
    "LTB",
    "MTAN",
    "PLE",
    "CrossStitch",
    "DSelectK",
    "DSelectKGate",
    "MMoE",
    "MultiTaskModel",
    "SequentialTrunk",
    "SoftmaxGate",
    "TapTrunk",
    "backbones",
    "build_architecture",
    "canonical_name",
    "heads",
    "smooth_step",
]
