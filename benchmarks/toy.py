"""The two-objective toy problem of the CAGrad (Liu et al. 2021) and Nash-MTL (Navon et al. 2022) papers.

Two losses of ``x = (x1, x2)``, each the blend of a log-barrier valley (for ``x2 > 0``) and a
quadratic bowl (for ``x2 < 0``):

.. math::
    f_i(x) = c_1(x) \\tilde f_i(x) + c_2(x) q_i(x), \\quad c_1 = \\max(\\tanh(x_2/2), 0),\\;
    c_2 = \\max(\\tanh(-x_2/2), 0),

with :math:`\\tilde f_1 = \\log\\max(|(-x_1-7)/2 - \\tanh(-x_2)|, 5\\cdot10^{-6}) + 6`,
:math:`\\tilde f_2 = \\log\\max(|(-x_1+3)/2 + \\tanh(-x_2) + 2|, 5\\cdot10^{-6}) + 6`,
:math:`q_1 = ((-x_1+7)^2 + 0.1(-x_2-8)^2)/10 - 20`, :math:`q_2 = ((-x_1-7)^2 + 0.1(-x_2-8)^2)/10 - 20`.
Nash-MTL scales :math:`f_1` by 0.1 to make the tasks imbalanced (``scale=0.1``). Every method
starts from the papers' five points and runs Adam on ``x`` through :func:`mtlagg.backward`; the
figure shows each method's trajectories over the contours of the mean loss, and the loss space
with the Pareto front. The papers run Adam with ``lr=1e-3`` for tens of thousands of steps
(``--steps 100000 --lr 0.001``); the default here (``lr=1e-2``, 2,500 steps) draws the same
picture in a couple of minutes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

import mtlagg
from mtlagg.aggregators import lookup

LOWER = 5e-6
STARTS = ((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0))
DEFAULT_METHODS = ("mean", "mgda", "pcgrad", "cagrad", "upgrad", "nashmtl")


def toy_losses(x: Tensor, scale: float = 1.0) -> Tensor:
    """``(f1, f2)`` at ``x`` (shape ``(..., 2)``); differentiable."""
    x1, x2 = x[..., 0], x[..., 1]
    valley1 = torch.clamp((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), LOWER).log() + 6
    valley2 = torch.clamp((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), LOWER).log() + 6
    bowl1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    bowl2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    c1 = torch.clamp(torch.tanh(x2 * 0.5), min=0)
    c2 = torch.clamp(torch.tanh(-x2 * 0.5), min=0)
    return torch.stack([scale * (valley1 * c1 + bowl1 * c2), valley2 * c1 + bowl2 * c2], dim=-1)


@dataclass
class Trajectory:
    method: str
    start: tuple[float, float]
    points: Tensor  # (steps + 1, 2)
    losses: Tensor  # (steps + 1, 2)


def run_method(
    method: str, start: Sequence[float], *, steps: int, lr: float, scale: float, record_every: int = 10
) -> Trajectory:
    aggregator = lookup(method)()
    x = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([x], lr=lr)
    points, values = [x.detach().clone()], [toy_losses(x.detach(), scale)]
    for step in range(steps):
        losses = toy_losses(x, scale).unbind()
        mtlagg.backward(losses, [x], aggregator, on_nonfinite="skip")
        optimizer.step()
        optimizer.zero_grad()
        if (step + 1) % record_every == 0 or step == steps - 1:
            points.append(x.detach().clone())
            values.append(toy_losses(x.detach(), scale))
    return Trajectory(method, (float(start[0]), float(start[1])), torch.stack(points), torch.stack(values))


def pareto_front(scale: float, resolution: int = 600) -> Tensor:
    """Non-dominated ``(f1, f2)`` pairs over a dense grid of ``x`` (an approximation of the front)."""
    grid = torch.linspace(-10, 10, resolution, dtype=torch.float64)
    xs = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), dim=-1).reshape(-1, 2)
    values = toy_losses(xs, scale)
    order = torch.argsort(values[:, 0])
    sorted_values = values[order]
    best = torch.cummin(sorted_values[:, 1], dim=0).values
    keep = torch.ones(len(best), dtype=torch.bool)
    keep[1:] = sorted_values[1:, 1] < best[:-1]
    return sorted_values[keep]


def run(
    methods: Sequence[str] = DEFAULT_METHODS,
    *,
    steps: int = 2_500,
    lr: float = 1e-2,
    scale: float = 0.1,
    starts: Sequence[Sequence[float]] = STARTS,
    progress: bool = True,
) -> list[Trajectory]:
    from benchmarks.progress import Progress

    trajectories = []
    bar = Progress(len(methods) * len(starts), "toy", enabled=progress)
    for method in methods:
        for start in starts:
            trajectories.append(run_method(method, start, steps=steps, lr=lr, scale=scale))
            bar.advance(f"{method} from {tuple(start)}")
    bar.close()
    return trajectories


def plot(trajectories: list[Trajectory], path: Path, scale: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(t.method for t in trajectories))
    grid = torch.linspace(-10, 10, 300, dtype=torch.float64)
    xs = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), dim=-1)
    mean_loss = toy_losses(xs, scale).mean(-1)
    front = pareto_front(scale)
    columns = len(methods)
    figure, axes = plt.subplots(2, columns, figsize=(3.2 * columns, 6.4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for column, method in enumerate(methods):
        top, bottom = axes[0][column], axes[1][column]
        top.contour(grid, grid, mean_loss.T, levels=25, cmap="Greys", linewidths=0.6)
        bottom.plot(front[:, 0], front[:, 1], color="black", linewidth=2, label="Pareto front")
        for n, trajectory in enumerate(t for t in trajectories if t.method == method):
            color = colors[n % len(colors)]
            top.plot(trajectory.points[:, 0], trajectory.points[:, 1], color=color, linewidth=1.5)
            top.scatter(*trajectory.points[0], color=color, marker="o", s=18)
            top.scatter(*trajectory.points[-1], color=color, marker="*", s=60, zorder=3)
            bottom.plot(trajectory.losses[:, 0], trajectory.losses[:, 1], color=color, linewidth=1.5)
            bottom.scatter(*trajectory.losses[-1], color=color, marker="*", s=60, zorder=3)
        top.set_title(method)
        top.set_xlabel("$x_1$")
        top.set_ylabel("$x_2$")
        bottom.set_xlabel("$f_1$" + (f" (×{scale:g})" if scale != 1 else ""))
        bottom.set_ylabel("$f_2$")
    axes[1][0].legend(loc="upper right", fontsize=8)
    figure.suptitle("Toy problem of CAGrad / Nash-MTL: trajectories (top) and loss space (bottom)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def summary(trajectories: list[Trajectory], scale: float) -> str:
    """Markdown table: per method, how many runs end within 0.1 of the Pareto front, and the final losses."""
    front = pareto_front(scale)
    lines = ["| method | runs reaching the front | final (f1, f2) per start |", "|---|---|---|"]
    for method in dict.fromkeys(t.method for t in trajectories):
        runs = [t for t in trajectories if t.method == method]
        reached = 0
        finals = []
        for t in runs:
            final = t.losses[-1]
            distance = torch.cdist(final[None], front).min().item()
            reached += int(distance < 0.1)
            finals.append(f"({final[0].item():.2f}, {final[1].item():.2f})" if math.isfinite(distance) else "nan")
        lines.append(f"| {method} | {reached}/{len(runs)} | {' '.join(finals)} |")
    return "\n".join(lines)
