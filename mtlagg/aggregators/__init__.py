"""Every aggregator, importable under its canonical class name, and :data:`REGISTRY`.

``REGISTRY`` maps the lowercase name (and aliases such as ``"ew"``) to the class.
"""

from ._base import (
    Aggregator,
    AggregatorInput,
    Needs,
    WeightedAggregator,
    compute_gramian,
    get_solver_device,
    set_solver_device,
)
from ._multibatch import MultiBatchAggregator
from ._registry import ALIASES, REGISTRY, lookup, register
from ._stateful import WeightOptimizer
from .alignedmtl import AlignedMTL
from .cagrad import CAGrad
from .config import ConFIG
from .consmtl import ConsMTL
from .constant import Constant
from .crmogm import CRMOGM
from .dbmtl import DBMTL
from .dualproj import DualProj
from .dwa import DWA
from .excessmtl import ExcessMTL
from .fairgrad import FairGrad
from .famo import FAMO
from .gls import GLS
from .go4align import GO4Align
from .graddrop import GradDrop
from .gradnorm import GradNorm
from .gradvac import GradVac
from .imtl import IMTL
from .imtl_l import IMTLL
from .imtlg import IMTLG
from .krum import Krum
from .logloss import SI, LogCAGrad, LogIMTL, LogLoss, LogMGDA
from .mean import EW, Mean
from .mgda import MGDA
from .moco import MoCo
from .modo import MoDo
from .nashmtl import NashMTL
from .pcd import PCD
from .pcgrad import PCGrad
from .pivrg import PIVRG
from .random import Random
from .sdmgrad import SDMGrad
from .stch import STCH
from .sum import Sum
from .trimmedmean import TrimmedMean
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
    "IMTLG",
    "IMTLL",
    "MGDA",
    "PCD",
    "PIVRG",
    "REGISTRY",
    "SI",
    "STCH",
    "UW",
    "Aggregator",
    "AggregatorInput",
    "AlignedMTL",
    "CAGrad",
    "ConFIG",
    "ConsMTL",
    "Constant",
    "DualProj",
    "ExcessMTL",
    "FairGrad",
    "GO4Align",
    "GradDrop",
    "GradNorm",
    "GradVac",
    "Krum",
    "LogCAGrad",
    "LogIMTL",
    "LogLoss",
    "LogMGDA",
    "Mean",
    "MoCo",
    "MoDo",
    "MultiBatchAggregator",
    "NashMTL",
    "Needs",
    "PCGrad",
    "Random",
    "SDMGrad",
    "Sum",
    "TrimmedMean",
    "UPGrad",
    "WeightOptimizer",
    "WeightedAggregator",
    "compute_gramian",
    "get_solver_device",
    "lookup",
    "register",
    "set_solver_device",
]
