"""Every aggregator, importable under its canonical class name, and :data:`REGISTRY`.

``REGISTRY`` maps the lowercase name (and aliases such as ``"ew"``) to the class.
"""

from ._base import Aggregator, AggregatorInput, Needs, WeightedAggregator, compute_gramian
from ._multibatch import MultiBatchAggregator
from ._registry import ALIASES, REGISTRY, lookup, register
from ._stateful import WeightOptimizer
from .cagrad import CAGrad
from .consmtl import ConsMTL
from .constant import Constant
from .crmogm import CRMOGM
from .dbmtl import DBMTL
from .dwa import DWA
from .excessmtl import ExcessMTL
from .famo import FAMO
from .gls import GLS
from .go4align import GO4Align
from .gradnorm import GradNorm
from .gradvac import GradVac
from .imtl import IMTL
from .imtl_l import IMTLL
from .mean import EW, Mean
from .mgda import MGDA
from .moco import MoCo
from .modo import MoDo
from .pcd import PCD
from .pcgrad import PCGrad
from .pivrg import PIVRG
from .random import Random
from .sdmgrad import SDMGrad
from .stch import STCH
from .sum import Sum
from .upgrad import UPGrad
from .uw import UW

__all__ = [
    "ALIASES",
    "CRMOGM",
    "DBMTL",
    "DWA",
    "EW",
    "FAMO",
    "GLS",
    "IMTL",
    "IMTLL",
    "MGDA",
    "PCD",
    "PIVRG",
    "REGISTRY",
    "STCH",
    "UW",
    "Aggregator",
    "AggregatorInput",
    "CAGrad",
    "ConsMTL",
    "Constant",
    "ExcessMTL",
    "GO4Align",
    "GradNorm",
    "GradVac",
    "Mean",
    "MoCo",
    "MoDo",
    "MultiBatchAggregator",
    "Needs",
    "PCGrad",
    "Random",
    "SDMGrad",
    "Sum",
    "UPGrad",
    "WeightOptimizer",
    "WeightedAggregator",
    "compute_gramian",
    "lookup",
    "register",
]
