"""Solvers for the small ``T x T`` problems of the aggregators, in pure torch.

Everything here runs in float64, batched over problems, on the device of the input, and checks
the optimality (KKT) conditions of its answer: a problem that cannot be solved to tolerance
raises :class:`mtlagg.errors.SolverError` instead of returning a wrong answer.
"""

from .qp import QP_TOLERANCE, solve_nonneg_qp
from .simplex import project_onto_simplex

__all__ = ["QP_TOLERANCE", "project_onto_simplex", "solve_nonneg_qp"]
