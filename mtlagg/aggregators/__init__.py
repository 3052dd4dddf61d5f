"""Every aggregator, importable under its canonical class name, and :data:`REGISTRY`.

``REGISTRY`` maps the lowercase name (and aliases such as ``"ew"``) to the class.
"""

from ._base import Aggregator, AggregatorInput, Needs, WeightedAggregator, compute_gramian
from ._registry import ALIASES, REGISTRY, lookup, register
from .cagrad import CAGrad
from .constant import Constant
from .mean import EW, Mean
from .mgda import MGDA
from .pcgrad import PCGrad
from .random import Random
from .sum import Sum
from .upgrad import UPGrad

__all__ = [
    "ALIASES",
    "EW",
    "MGDA",
    "REGISTRY",
    "Aggregator",
    "AggregatorInput",
    "CAGrad",
    "Constant",
    "Mean",
    "Needs",
    "PCGrad",
    "Random",
    "Sum",
    "UPGrad",
    "WeightedAggregator",
    "compute_gramian",
    "lookup",
    "register",
]
