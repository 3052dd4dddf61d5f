"""mtlagg: multi-task learning by gradient aggregation.

One call inside any PyTorch training loop::

    mtlagg.backward(losses, shared_params, aggregator=CAGrad())
    optimizer.step()
"""

from . import aggregators, bilevel, errors, solvers
from ._backward import backward
from ._functional import gramian, jacobian
from ._result import BackwardResult
from .aggregators import REGISTRY, Aggregator, Needs, WeightedAggregator
from .errors import NonFiniteError, SolverError, VmapError
from .multibatch import multibatch_backward

__version__ = "0.1.0"

__all__ = [
    "REGISTRY",
    "Aggregator",
    "BackwardResult",
    "Needs",
    "NonFiniteError",
    "SolverError",
    "VmapError",
    "WeightedAggregator",
    "aggregators",
    "backward",
    "bilevel",
    "errors",
    "gramian",
    "jacobian",
    "multibatch_backward",
    "solvers",
]
