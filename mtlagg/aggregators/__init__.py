"""Every aggregator, importable under its canonical class name, and :data:`REGISTRY`.

``REGISTRY`` maps the lowercase name (and aliases such as ``"ew"``) to the class.
"""

from ._base import Aggregator, AggregatorInput, Needs, WeightedAggregator, compute_gramian
from ._registry import ALIASES, REGISTRY, lookup, register
from .alignedmtl import AlignedMTL
from .cagrad import CAGrad
from .config import ConFIG
from .constant import Constant
from .dualproj import DualProj
from .fairgrad import FairGrad
from .graddrop import GradDrop
from .imtlg import IMTLG
from .krum import Krum
from .logloss import SI, LogCAGrad, LogIMTL, LogLoss, LogMGDA
from .mean import EW, Mean
from .mgda import MGDA
from .nashmtl import NashMTL
from .pcgrad import PCGrad
from .random import Random
from .sum import Sum
from .trimmedmean import TrimmedMean
from .upgrad import UPGrad

__all__ = [
    "ALIASES",
    "EW",
    "IMTLG",
    "MGDA",
    "REGISTRY",
    "SI",
    "Aggregator",
    "AggregatorInput",
    "AlignedMTL",
    "CAGrad",
    "ConFIG",
    "Constant",
    "DualProj",
    "FairGrad",
    "GradDrop",
    "Krum",
    "LogCAGrad",
    "LogIMTL",
    "LogLoss",
    "LogMGDA",
    "Mean",
    "NashMTL",
    "Needs",
    "PCGrad",
    "Random",
    "Sum",
    "TrimmedMean",
    "UPGrad",
    "WeightedAggregator",
    "compute_gramian",
    "lookup",
    "register",
]
