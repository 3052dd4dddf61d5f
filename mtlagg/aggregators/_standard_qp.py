r"""A small dense QP solver in standard form, for the problems of PCD and FORUM.

.. math:: \min_x \tfrac12 x^\top Q x + q^\top x \quad\text{s.t.}\quad A x = b,\; x \ge 0,

with ``Q`` symmetric PSD (``n`` up to a few hundred) and a few equality rows. Mehrotra's
predictor-corrector primal-dual interior-point method in float64; the answer's KKT conditions are
checked (relative tolerance) and a :class:`~mtlagg.errors.SolverError` is raised when they fail.
(The non-negative and simplex QPs of :mod:`mtlagg.solvers` cover the other aggregators.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlagg.errors import SolverError

TOLERANCE = 1e-9


def solve_standard_qp(
    Q: Tensor, q: Tensor, A: Tensor, b: Tensor, *, max_iterations: int = 100, tolerance: float = TOLERANCE
) -> tuple[Tensor, Tensor]:
    """Solve the QP; returns ``(x, y)``, the solution and the multipliers of ``A x = b``."""
    Q = Q.detach().to(device="cpu", dtype=torch.float64)
    q = q.detach().to(device="cpu", dtype=torch.float64)
    A = A.detach().to(device="cpu", dtype=torch.float64).reshape(-1, Q.shape[0])
    b = b.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    n, m = Q.shape[0], A.shape[0]
    # Scale the objective so that its largest entries are about 1.
    scale = max(float(Q.abs().max()), float(q.abs().max()), 1e-300)
    Qs, qs = Q / scale, q / scale
    x = torch.ones(n, dtype=torch.float64)
    z = torch.ones(n, dtype=torch.float64)
    y = torch.zeros(m, dtype=torch.float64)
    size = n + m
    norm_q = 1 + float(qs.abs().max())
    norm_b = 1 + float(b.abs().max())
    for _ in range(max_iterations):
        r_dual = Qs @ x + qs - A.T @ y - z
        r_primal = A @ x - b
        mu = float(x @ z) / n
        if (
            float(r_dual.abs().max()) <= tolerance * norm_q
            and float(r_primal.abs().max()) <= tolerance * norm_b
            and mu <= tolerance * 1e-2 * (1 + float(x.abs().max()))
        ):
            break
        matrix = torch.zeros(size, size, dtype=torch.float64)
        matrix[:n, :n] = Qs + torch.diag(z / x)
        matrix[:n, n:] = -A.T
        matrix[n:, :n] = A

        def newton(r_complementarity: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            rhs = torch.cat([-r_dual - r_complementarity / x, -r_primal])  # noqa: B023
            try:
                step = torch.linalg.solve(matrix, rhs)  # noqa: B023
            except RuntimeError:
                step = torch.linalg.lstsq(matrix, rhs[:, None]).solution.flatten()  # noqa: B023
            dx, dy = step[:n], step[n:]
            dz = (-r_complementarity - z * dx) / x  # noqa: B023
            return dx, dy, dz

        def longest(v: Tensor, dv: Tensor) -> float:
            negative = dv < 0
            if not bool(negative.any()):
                return 1.0
            return min(1.0, float((-v[negative] / dv[negative]).min()))

        dx, dy, dz = newton(x * z)
        a_primal, a_dual = longest(x, dx), longest(z, dz)
        mu_affine = float((x + a_primal * dx) @ (z + a_dual * dz)) / n
        sigma = (mu_affine / mu) ** 3 if mu > 0 else 0.0
        dx, dy, dz = newton(x * z + dx * dz - sigma * mu)
        a_primal, a_dual = 0.99 * longest(x, dx), 0.99 * longest(z, dz)
        x = x + a_primal * dx
        y = y + a_dual * dy
        z = z + a_dual * dz
    gradient = Qs @ x + qs - A.T @ y
    slack = float((A @ x - b).abs().max())
    bound = tolerance * 100
    ok = (
        slack <= bound * norm_b
        and float(x.min()) >= -bound
        and float(gradient.min()) >= -bound * norm_q * (1 + float(x.abs().max()))
        and float((x.clamp_min(0) * gradient).abs().max()) <= bound * norm_q * (1 + float(x.abs().max()))
    )
    if not ok:
        raise SolverError(
            f"the interior-point QP solver did not reach its tolerance (n={n}, equality rows={m}): primal residual "
            f"{slack:.2e}, complementarity {float((x.clamp_min(0) * gradient).abs().max()):.2e}"
        )
    return x.clamp_min(0), y * scale
