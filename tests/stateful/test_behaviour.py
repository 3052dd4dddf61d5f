"""The point of each method, visible on a small problem (trained for a few hundred steps)."""

from __future__ import annotations

import torch

import mtlagg
from mtlagg.aggregators import FAMO, UW, GradNorm, Mean

from ._toys import make_model, mse_losses


def train(aggregator, steps: int, scales, noise=None, compute_gramian=False, seed=0):
    """Regress ``scale_t * sin(2 x_t)`` (plus noise) for each task; returns per-step results."""
    model = make_model(seed, num_tasks=len(scales))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(steps):
        x = torch.randn(64, 5, generator=generator, dtype=torch.float64)
        targets = []
        for t, scale in enumerate(scales):
            y = scale * torch.sin(2 * x[:, t : t + 1])
            if noise is not None:
                y = y + noise[t] * torch.randn(64, 1, generator=generator, dtype=torch.float64)
            targets.append(y)
        batch = (x, targets)
        optimizer.zero_grad()
        result = mtlagg.backward(
            mse_losses(model, batch), model.trunk.parameters(), aggregator, compute_gramian=compute_gramian
        )
        optimizer.step()
        if isinstance(aggregator, FAMO):
            with torch.no_grad():
                aggregator.update(mse_losses(model, batch))
        history.append(result)
    return history


def test_uw_gives_the_noisier_task_a_smaller_weight():
    history = train(UW(weight_lr=0.05), 250, scales=[1.0, 1.0], noise=[0.0, 2.0])
    weights = history[-1].weights
    assert weights[1] < 0.1 * weights[0], weights
    assert history[0].weights[0] == history[0].weights[1]  # equal at the start


def weighted_norm_spread(result) -> float:
    norms = result.gramian.diagonal().sqrt() * (result.weights if result.weights is not None else 1)
    return float(norms.max() / norms.min())


def test_gradnorm_brings_the_task_gradient_norms_together():
    gradnorm = train(GradNorm(), 250, scales=[1.0, 10.0])
    mean = train(Mean(), 250, scales=[1.0, 10.0], compute_gramian=True)
    assert weighted_norm_spread(gradnorm[0]) > 3  # the tasks' gradients start far apart
    assert weighted_norm_spread(gradnorm[-1]) < 2
    assert weighted_norm_spread(mean[-1]) > 3  # control: equal weights leave them apart


def log_decrease(history) -> torch.Tensor:
    start = torch.stack([r.losses for r in history[:10]]).mean(0)
    end = torch.stack([r.losses for r in history[-10:]]).mean(0)
    return torch.log(start / end)


def test_famo_makes_the_losses_fall_at_similar_rates():
    famo = log_decrease(train(FAMO(), 300, scales=[0.3, 3.0]))
    mean = log_decrease(train(Mean(), 300, scales=[0.3, 3.0]))
    assert float((famo[0] - famo[1]).abs()) < 0.5 * float((mean[0] - mean[1]).abs()), (famo, mean)
    assert float(famo.min()) > float(mean.min())  # the slow task of equal weighting falls faster
