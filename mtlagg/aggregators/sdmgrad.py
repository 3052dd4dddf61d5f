"""SDMGrad: stochastic direction-oriented multi-objective gradient descent."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlagg.solvers import project_onto_simplex

from ._base import check_preference, preference_for
from ._multibatch import MultiBatchAggregator
from ._registry import register


@register()
class SDMGrad(MultiBatchAggregator):
    r"""SDMGrad (Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple and Provable
    Stochastic Algorithms", NeurIPS 2023).

    Three independent batches per step: :math:`\xi, \xi'` for the weights, :math:`\zeta` for the
    update (``losses_per_batch = [losses_xi, losses_xi_prime, losses_zeta]``). With
    :math:`A = J_\xi J_{\xi'}^\top / s^2` (:math:`s` the mean of :math:`\sqrt{\max(A_{ii}, 0)}`, the scale
    normalisation of the official code) and the preference :math:`\tilde w` (:math:`1/T` each), the
    weights take ``n_iter`` projected SGD-with-momentum steps on
    :math:`\tfrac12 \lVert J^\top(w + \lambda\tilde w)\rVert^2`, i.e. along :math:`A(w + \lambda\tilde w)`,
    warm-started from the previous step (:math:`1/T` at first):

    .. math:: v \leftarrow \mu v + A (w + \lambda \tilde w),\qquad w \leftarrow \Pi_\Delta(w - \eta v),
        \qquad d = J_\zeta^\top \frac{w + \lambda \tilde w}{1 + \lambda}.

    The momentum buffer restarts at every step (a fresh optimizer per step, as both peers).
    Task-specific parameters get the gradient of the :math:`\zeta` batch only (LibMTL adds up the
    three batches').

    Needs: three batches (:func:`mtlagg.multibatch_backward`). State: :math:`w`.
    Defaults: :math:`\lambda = 0.3` (the paper's experiments; the official class default is 0.6),
    ``n_iter = 20``, :math:`\eta = 10`, :math:`\mu = 0.5` (TorchJD's reading of the official code;
    LibMTL uses :math:`\eta = 5`).

    Args:
        lambda_: pull towards the preference direction (:math:`\ge 0`).
        n_iter: inner iterations per step.
        lr: inner step size :math:`\eta`.
        momentum: inner momentum :math:`\mu` in [0, 1).
        pref_vector: :math:`\tilde w` (default :math:`1/T`).
    """

    num_batches = 3

    def __init__(
        self,
        lambda_: float = 0.3,
        n_iter: int = 20,
        lr: float = 10.0,
        momentum: float = 0.5,
        pref_vector: Tensor | None = None,
    ) -> None:
        if not lambda_ >= 0:
            raise ValueError(f"lambda_ must be non-negative, got {lambda_!r}")
        if not isinstance(n_iter, int) or n_iter < 1:
            raise ValueError(f"n_iter must be a positive int, got {n_iter!r}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.lambda_ = float(lambda_)
        self.n_iter = n_iter
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.pref_vector = check_preference(pref_vector)
        self._init_state()

    def _fresh_state(self) -> dict[str, Any]:
        return {"num_tasks": None, "weights": None}

    def cross_weights(self, cross: Tensor) -> Tensor:
        A = cross.detach().to(torch.float64)
        T = A.shape[0]
        state = self._state
        if self._check_num_tasks(T, "tasks"):
            state["weights"] = torch.full((T,), 1.0 / T, dtype=torch.float64, device=A.device)
        preference = preference_for(self.pref_vector, T).to(A.device)
        scale = A.diagonal().clamp_min(0).sqrt().mean()
        A = A / (scale**2 + 1e-8)
        w = state["weights"]
        velocity: Tensor | None = None
        for _ in range(self.n_iter):
            gradient = A @ (w + self.lambda_ * preference)
            velocity = gradient if velocity is None else self.momentum * velocity + gradient
            w = project_onto_simplex(w - self.lr * velocity)
        state["weights"] = w
        return (w + self.lambda_ * preference) / (1 + self.lambda_)

    def extra_repr(self) -> str:
        return f"lambda_={self.lambda_:g}, n_iter={self.n_iter}, lr={self.lr:g}, momentum={self.momentum:g}"
