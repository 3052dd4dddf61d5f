"""Solvers for the small ``T x T`` problems of the aggregators, in pure torch.

Everything here runs in float64, batched over problems where there are several, on the device of
the input, and checks the optimality conditions of its answer: a problem that cannot be solved to
tolerance raises :class:`mtlagg.errors.SolverError` (or reports ``converged=False`` where the
caller decides), instead of returning a wrong answer.

* :func:`solve_nonneg_qp`: convex QPs over ``x >= 0`` or the simplex (MGDA, UPGrad, DualProj).
* :func:`project_weights` / :func:`solve_dual_cone` / :func:`solve_dual_cone_diagonal`: dual-cone
  projections in weight space (UPGrad, DualProj), on the Gramian truncated at its rounding noise.
* :func:`solve_cagrad_dual`: the dual of CAGrad.
* :func:`solve_alpha_fair`: ``G w = w^(-1/alpha)`` (FairGrad; Nash-MTL is ``alpha = 1``).
* :func:`project_onto_simplex`: Euclidean projection onto the probability simplex.
* :func:`set_numba` / :func:`numba_enabled`: the optional numba kernel of the dual-cone projections
  on the CPU (``pip install "mtlagg[numba]"``; see :mod:`mtlagg.solvers.compiled`).
"""

from .cagrad import CAGradDual, solve_cagrad_dual
from .compiled import numba_enabled, set_numba
from .dual_cone import project_weights, solve_dual_cone, solve_dual_cone_diagonal
from .fair import FAIR_TOLERANCE, FairSolution, solve_alpha_fair
from .qp import QP_TOLERANCE, solve_nonneg_qp
from .simplex import project_onto_simplex

__all__ = [
    "FAIR_TOLERANCE",
    "QP_TOLERANCE",
    "CAGradDual",
    "FairSolution",
    "numba_enabled",
    "project_onto_simplex",
    "project_weights",
    "set_numba",
    "solve_alpha_fair",
    "solve_cagrad_dual",
    "solve_dual_cone",
    "solve_dual_cone_diagonal",
    "solve_nonneg_qp",
]
