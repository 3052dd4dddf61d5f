"""SDMGrad and MoDo through mtlagg.multibatch_backward."""

from __future__ import annotations

import pytest
import torch
from torchjd import aggregation as tja

import mtlagg
from mtlagg.aggregators import MoDo, SDMGrad

from ._toys import make_model, mse_losses, toy_batch


def cross_matrices(seed: int, steps: int = 3, T: int = 3):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        J1 = torch.randn(T, 7, generator=generator, dtype=torch.float64)
        J2 = J1 + 0.3 * torch.randn(T, 7, generator=generator, dtype=torch.float64)
        out.append(J1 @ J2.T)
    return out


def test_sdmgrad_matches_torchjd():
    ours = SDMGrad(lambda_=0.3, n_iter=20, lr=10.0, momentum=0.5)
    reference = tja.SDMGradWeighting(lr=10.0, momentum=0.5, n_iter=20, lambda_=0.3)
    for A in cross_matrices(0):
        torch.testing.assert_close(ours.cross_weights(A), reference(A))


def test_sdmgrad_by_hand_one_inner_step():
    ours = SDMGrad(lambda_=0.5, n_iter=1, lr=0.1, momentum=0.0)
    A = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    scale = ((2**0.5 + 1) / 2) ** 2
    w = torch.full((2,), 0.5, dtype=torch.float64)
    moved = w - 0.1 * (A / (scale + 1e-8)) @ (w + 0.5 * w)
    expected = (moved - (moved.sum() - 1) / 2 + 0.5 * 0.5) / 1.5  # the projection shifts both equally
    torch.testing.assert_close(ours.cross_weights(A), expected)


def test_modo_matches_torchjd():
    ours = MoDo(gamma=0.05, rho=0.1)
    reference = tja.MoDoWeighting(gamma=0.05, rho=0.1)
    for A in cross_matrices(1):
        torch.testing.assert_close(ours.cross_weights(A), reference(A))


@pytest.mark.parametrize("aggregator", [SDMGrad(), MoDo(gamma=0.1), MoDo(gamma=0.1, num_batches=2)])
def test_multibatch_backward_is_the_weighted_update_batch(aggregator):
    model = make_model(0)
    generator = torch.Generator().manual_seed(0)
    batches = [toy_batch(generator) for _ in range(aggregator.num_batches)]
    shared = list(model.trunk.parameters())
    jacobians = [mtlagg.jacobian(mse_losses(model, b), shared) for b in batches[:2]]
    replay = type(aggregator)(**_kwargs(aggregator))
    weights = replay.cross_weights(jacobians[0] @ jacobians[1].T)
    if aggregator.num_batches == 3:
        update = mtlagg.jacobian(mse_losses(model, batches[2]), shared)
        head_losses = mse_losses(model, batches[2])
    else:
        update = (jacobians[0] + jacobians[1]) / 2
        head_losses = [(a + b) / 2 for a, b in zip(mse_losses(model, batches[0]), mse_losses(model, batches[1]))]
    expected = weights.to(update) @ update
    head_expected = torch.autograd.grad(head_losses[1], model.heads[1].weight)[0]
    model.zero_grad()
    result = mtlagg.multibatch_backward([mse_losses(model, b) for b in batches], model.trunk.parameters(), aggregator)
    got = torch.cat([p.grad.reshape(-1) for p in shared])
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(result.weights.to(weights), weights)
    # heads: the unweighted gradient of the update batch
    torch.testing.assert_close(model.heads[1].weight.grad, head_expected)


def _kwargs(aggregator):
    if isinstance(aggregator, SDMGrad):
        return {}
    return {"gamma": aggregator.gamma, "rho": aggregator.rho, "num_batches": aggregator.num_batches}


def test_missing_batches():
    model = make_model(0)
    batch = toy_batch(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"SDMGrad needs 3 independent batches per step .* got 2"):
        mtlagg.multibatch_backward(
            [mse_losses(model, batch), mse_losses(model, batch)], model.trunk.parameters(), SDMGrad()
        )


def test_same_losses_twice():
    model = make_model(0)
    losses = mse_losses(model, toy_batch(torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="each batch needs its own forward pass"):
        mtlagg.multibatch_backward([losses, losses, losses], model.trunk.parameters(), SDMGrad())


def test_batches_with_different_task_counts():
    model = make_model(0)
    generator = torch.Generator().manual_seed(0)
    batches = [mse_losses(model, toy_batch(generator)) for _ in range(3)]
    batches[1] = batches[1][:2]
    with pytest.raises(ValueError, match="batch 1 has 2 losses but batch 0 has 3"):
        mtlagg.multibatch_backward(batches, model.trunk.parameters(), MoDo())


def test_one_batch_backward_is_refused():
    model = make_model(0)
    losses = mse_losses(model, toy_batch(torch.Generator().manual_seed(0)))
    with pytest.raises(TypeError, match=r"MoDo needs 3 independent batches .* mtlagg.multibatch_backward"):
        mtlagg.backward(losses, model.trunk.parameters(), MoDo())


def test_not_a_multibatch_aggregator():
    with pytest.raises(TypeError, match="needs a multi-batch aggregator instance"):
        mtlagg.multibatch_backward([[], [], []], [], mtlagg.aggregators.Mean())
