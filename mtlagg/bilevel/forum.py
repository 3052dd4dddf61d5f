"""FORUM: a first-order multi-gradient algorithm for multi-objective bilevel optimisation."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mtlagg._functional import jacobian
from mtlagg.aggregators._registry import register
from mtlagg.aggregators._standard_qp import solve_standard_qp
from mtlagg.aggregators._stateful import softmax_vjp

from ._common import BilevelMethod, BilevelResult, FunctionalModel, LossFn, Outer, gradients_or_zeros, loss_list


def forum_qp(M: Tensor, pi: Tensor, c: float) -> Tensor:
    r"""FORUM's subproblem: :math:`\min_w w^\top M w - c\,w_{T}` over :math:`w \ge 0`,
    :math:`\sum_{t<T} w_t = 1`, :math:`w_{T} \ge \sum_{t<T} \pi_t w_t` (``M`` is ``(T+1) x (T+1)``).

    Solved exactly in the variables :math:`(v, u) \ge 0` with :math:`w = (v, u + \pi^\top v)` (a QP in
    standard form with one equality row); returns :math:`w`.
    """
    T = M.shape[0] - 1
    B = torch.eye(T + 1, dtype=torch.float64)
    B[T, :T] = pi
    Q = 2 * B.T @ M.cpu().to(torch.float64) @ B
    q = -c * torch.cat([pi, torch.ones(1, dtype=torch.float64)])
    A = torch.cat([torch.ones(T, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])[None]
    x, _ = solve_standard_qp(Q, q, A, torch.ones(1, dtype=torch.float64))
    return B @ x


@register()
class FORUM(BilevelMethod):
    r"""FORUM (Ye, Lin, Cao, Zhang & Tsang, "A First-Order Multi-Gradient Algorithm for Multi-Objective
    Bi-Level Optimization", ECAI 2024), as in LibMTL (whose authors wrote FORUM).

    The lower level trains the model on :math:`f(\alpha, \omega) = \sum_i \mathrm{softmax}(\alpha)_i
    L_i^{\text{in}}(\omega)`; the upper level has one objective per outer task,
    :math:`F_t(\omega) = L_t^{\text{out}}(\omega)`. FORUM replaces the lower problem by the value-function
    constraint :math:`q(\alpha, \omega) = f(\alpha, \omega) - f(\alpha, \omega^K) \le 0`, where
    :math:`\omega^K` is :math:`K` SGD steps (``inner_step``, rate ``inner_lr``) from :math:`\omega` on
    :math:`f(\alpha, \cdot)`, so that only first-order information is needed:

    * :math:`\nabla q = \big(J_s^\top (L^{\text{in}}(\omega) - L^{\text{in}}(\omega^K)),\
      \nabla_\omega f(\alpha, \omega)\big)`
      (the :math:`\alpha` part in closed form from loss values);
    * the normalised outer gradients :math:`\hat g_t = \nabla F_t / \lVert\nabla F_t\rVert` (zero in
      :math:`\alpha`), :math:`\pi_t = \phi - \langle \hat g_t, \nabla q\rangle / (\lVert\nabla q\rVert^2 + 10^{-8})`;
    * :math:`w` solves :func:`forum_qp` with :math:`M = A A^\top`, :math:`A = [\hat g_1; \dots; \hat g_T; \nabla q]`,
      :math:`c = \phi(\lVert\nabla q\rVert^2 + 10^{-8})` (exact QP solver);
    * :math:`\lambda \leftarrow \lambda + \rho_k (w_{<T} - \lambda)`, :math:`\rho_k = (k+1)^{-3/4}` at step
      :math:`k` (the paper; LibMTL uses the epoch index instead), :math:`\nu = \max(\pi^\top\lambda, 0)`;
    * the update direction :math:`\sum_t \lambda_t \hat g_t + \nu \nabla q`: its :math:`\omega` part goes
      into the model's ``.grad`` (all parameters), its :math:`\alpha` part drives the logits' Adam.

    **Call** ``forum.step(model, loss_fn, batch, outer_batch)``, then ``optimizer.step()``.
    State: logits, Adam moments, :math:`\lambda`, step counter.

    Defaults (LibMTL): :math:`\phi = 0.1`, ``inner_step = 5``, ``inner_lr = 0.1``, Adam at ``1e-3``;
    outer data = validation (LibMTL uses a second training half-batch: ``outer="split"``). An inner
    loop whose loss exceeds ``1e5`` stops early with a warning (LibMTL stops silently).

    Args:
        phi: :math:`\phi`.
        inner_step: :math:`K`.
        inner_lr: the inner SGD rate.
        weight_lr, weight_optimizer, outer, outer_tasks: see :class:`BilevelMethod`.
        chunk_size: passed to :func:`mtlagg.jacobian`.
    """

    def __init__(
        self,
        phi: float = 0.1,
        inner_step: int = 5,
        inner_lr: float = 0.1,
        weight_lr: float = 1e-3,
        weight_optimizer: Literal["adam", "sgd"] = "adam",
        outer: Outer = "validation",
        outer_tasks: Sequence[int] | None = None,
        chunk_size: int | None = None,
    ) -> None:
        if not phi >= 0:
            raise ValueError(f"phi must be non-negative, got {phi!r}")
        if not isinstance(inner_step, int) or inner_step < 1:
            raise ValueError(f"inner_step must be a positive int, got {inner_step!r}")
        if not inner_lr > 0:
            raise ValueError(f"inner_lr must be positive, got {inner_lr!r}")
        self.phi = float(phi)
        self.inner_step = inner_step
        self.inner_lr = float(inner_lr)
        self.chunk_size = chunk_size
        super().__init__(weight_lr, weight_optimizer, outer, outer_tasks)

    def _fresh_state(self) -> dict[str, Any]:
        return {**super()._fresh_state(), "lambda": None}

    def _step(
        self, model: nn.Module, loss_fn: LossFn, inner_batch: Any, outer_batch: Any, update_batch: Any
    ) -> BilevelResult:
        fmodel = FunctionalModel(model)
        params = fmodel.params
        # Lower objective at omega, on the real model (its statistics update as in a training step).
        inner = torch.stack(loss_list(loss_fn, model, inner_batch, self._state["num_tasks"]))
        T = inner.shape[0]
        logits = self._logits(T, inner)
        outer_tasks = self._outer_indices(T)
        z = torch.softmax(logits, dim=0).to(inner)
        grad_f = gradients_or_zeros(torch.autograd.grad((z * inner).sum(), params, allow_unused=True), params)
        values = inner.detach().to(logits)
        # K virtual SGD steps on f(alpha, .), functional.
        current = [p.detach() for p in params]
        for k in range(self.inner_step):
            virtual = [p.requires_grad_() for p in (c.clone() for c in current)]
            losses_k = torch.stack(loss_list(loss_fn, fmodel.at(virtual), inner_batch, T))
            if float((z * losses_k).detach().sum()) > 1e5:
                warnings.warn(
                    f"FORUM's inner loop stopped after {k} of {self.inner_step} steps: the inner loss exceeds 1e5 "
                    "(inner_lr or inner_step too large)",
                    RuntimeWarning,
                    stacklevel=3,
                )
                break
            grads = gradients_or_zeros(torch.autograd.grad((z * losses_k).sum(), virtual, allow_unused=True), virtual)
            current = [(v - self.inner_lr * g).detach() for v, g in zip(virtual, grads)]
        with torch.no_grad():
            values_k = torch.stack(loss_list(loss_fn, fmodel.at(current), inner_batch, T)).to(logits)
        q_alpha = softmax_vjp(logits, values) - softmax_vjp(logits, values_k)
        q_omega = torch.cat([g.reshape(-1) for g in grad_f]).to(torch.float64)
        # Outer objectives at omega (validation data: the buffers are not touched).
        outer = loss_list(loss_fn, fmodel.at(params), outer_batch, T)
        outer_jacobian = jacobian([outer[t] for t in outer_tasks], params, chunk_size=self.chunk_size)
        outer_jacobian = outer_jacobian.to(torch.float64)
        norms = torch.linalg.vector_norm(outer_jacobian, dim=1)
        unit = outer_jacobian / torch.where(norms > 0, norms, 1.0)[:, None]
        q_squared = float(q_alpha @ q_alpha + q_omega @ q_omega)
        cross = unit @ q_omega  # <g_t, q> (the outer gradients are zero in alpha)
        pi = self.phi - cross / (q_squared + 1e-8)
        n_out = len(outer_tasks)
        M = torch.empty(n_out + 1, n_out + 1, dtype=torch.float64, device=unit.device)
        M[:n_out, :n_out] = unit @ unit.T
        M[:n_out, n_out] = cross
        M[n_out, :n_out] = cross
        M[n_out, n_out] = q_squared
        w = forum_qp(M, pi.cpu(), self.phi * (q_squared + 1e-8)).to(unit.device)
        state = self._state
        rate = (state["step"] + 1) ** -0.75
        lam = w[:n_out] if state["lambda"] is None else state["lambda"] + rate * (w[:n_out] - state["lambda"])
        state["lambda"] = lam
        nu = max(float(lam @ pi), 0.0)
        direction = lam @ unit + nu * q_omega
        offset = 0
        for p in params:
            size = p.numel()
            piece = direction[offset : offset + size].view_as(p).to(p.dtype)
            p.grad = piece.clone() if p.grad is None else p.grad + piece
            offset += size
        self._update_logits(nu * q_alpha)
        return BilevelResult(inner.detach(), self.weights.to(inner.dtype), torch.stack(outer).detach())

    def extra_repr(self) -> str:
        return f"phi={self.phi:g}, inner_step={self.inner_step}, inner_lr={self.inner_lr:g}, outer={self.outer!r}"
