"""FairGrad: alpha-fair allocation of the update among the tasks."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from mtlagg.solvers import FAIR_TOLERANCE

from ._base import AggregatorInput, Needs, WeightedAggregator
from ._fair import ON_FAILURE, OnFailure, fair_weights
from ._registry import register
from ._utils import check_float, check_int, output_dtype


@register()
class FairGrad(WeightedAggregator):
    r"""FairGrad (Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024).

    The update :math:`d = J^\top w` maximises the :math:`\alpha`-fair utility of the task
    improvements :math:`\langle g_i, d\rangle`; its optimality condition (Eq. 4 of the paper) is

    .. math:: (G w)_i = w_i^{-1/\alpha}, \quad w > 0,

    solved here by Newton's method on the convex potential whose gradient it is
    (:func:`~mtlagg.solvers.solve_alpha_fair`, float64, residual checked to ``tol``); the official
    code runs ``scipy.optimize.least_squares`` on the raw residual. :math:`\alpha = 1` is
    proportional fairness (the Nash-MTL condition); :math:`\alpha \to \infty` tends to max-min
    fairness. Every task improves: :math:`\langle g_i, d\rangle = w_i^{-1/\alpha} > 0`
    (non-conflicting).

    Degenerate cases (documented, never silent): zero task gradients get weight 0 and the others
    are balanced among themselves; if the equations have no solution (the origin is in the convex
    hull of the gradients) the weights are 0; both raise with ``on_failure="raise"`` and warn with
    ``"warn"`` (default).

    Scale convention: the raw solution of the equations on the raw Gramian (as TorchJD; ``w``
    scales as :math:`\lVert g\rVert^{-2\alpha/(\alpha+1)}`). MTLlib then multiplies the update by
    ``T`` and clips its norm to 1.

    Args:
        alpha: the fairness parameter, ``> 0``. Default 2.0, the value of every published run of
            the official code (its command-line default is 1.0).
        on_failure: ``"warn"`` (default) or ``"raise"``, see above.
        tol: tolerance on :math:`\max_i |w_i^{1/\alpha}(Gw)_i - 1|`.
        max_iterations: Newton steps before the failure policy applies.
    """

    needs: ClassVar[Needs] = Needs.GRAMIAN
    host_solve: ClassVar[bool] = True
    non_conflicting: ClassVar[bool] = True

    def __init__(
        self,
        alpha: float = 2.0,
        *,
        on_failure: OnFailure = "warn",
        tol: float = FAIR_TOLERANCE,
        max_iterations: int = 100,
    ) -> None:
        self.alpha = check_float(alpha, "alpha", minimum=0.0, strict=True)
        if on_failure not in ON_FAILURE:
            raise ValueError(f"on_failure must be one of {ON_FAILURE}, got {on_failure!r}")
        self.on_failure = on_failure
        self.tol = check_float(tol, "tol", minimum=0.0, strict=True)
        self.max_iterations = check_int(max_iterations, "max_iterations", minimum=1)

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        gramian = inputs.gramian
        weights = fair_weights(
            gramian,
            self.alpha,
            method="FairGrad",
            on_failure=self.on_failure,
            tol=self.tol,
            max_iterations=self.max_iterations,
        )
        return weights.to(output_dtype(gramian))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
