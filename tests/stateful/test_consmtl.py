"""ConsMTL: its explicit call against an independent computation."""

from __future__ import annotations

import pytest
import torch
from scipy.optimize import least_squares

import mtlagg
from mtlagg.aggregators import ConsMTL

from ._toys import make_model, toy_batch


def forward(model, x, per_task: bool):
    h = model.trunk(x)
    reps = [h * (1 + 0.5 * i) for i in range(len(model.heads))] if per_task else [h] * len(model.heads)
    return reps, [head(z) for head, z in zip(model.heads, reps)]


def reference_grads(model, batch, per_task: bool, lambda_: float, clip: float, max_norm: float):
    x, targets = batch
    reps, preds = forward(model, x, per_task)
    losses = [torch.nn.functional.mse_loss(p, y) for p, y in zip(preds, targets)]
    shared = list(model.trunk.parameters())
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(l, shared, retain_graph=True)]) for l in losses]
    J = torch.stack(rows)
    G = (J @ J.T).detach().numpy()
    T = len(losses)
    solution = least_squares(
        lambda v: G @ v - v**-0.5, x0=[1.0] * T, bounds=(1e-12, float("inf")), xtol=1e-15, ftol=1e-15, gtol=1e-15
    ).x
    x_sol = torch.tensor(solution, dtype=torch.float64)
    d = T * x_sol @ J
    d = d * min(1.0, max_norm / float(d.norm()))
    deltas = [torch.autograd.grad(l, z, create_graph=True)[0] for l, z in zip(losses, reps)]
    target = sum(x_sol[i] * deltas[i].detach() for i in range(T))
    heads = []
    for i, head in enumerate(model.heads):
        params = list(head.parameters())
        g1 = torch.autograd.grad(losses[i], params, retain_graph=True)
        g2 = torch.autograd.grad(-lambda_ * (deltas[i] * target).sum(), params, retain_graph=True)
        n1 = torch.sqrt(sum((g**2).sum() for g in g1))
        n2 = torch.sqrt(sum((g**2).sum() for g in g2))
        factor = min(1.0, float(clip * n1 / n2))
        heads.append([a + factor * b for a, b in zip(g1, g2)])
    return d, heads


@pytest.mark.parametrize("per_task", [False, True])
def test_matches_an_independent_computation(per_task):
    model = make_model(1)
    batch = toy_batch(torch.Generator().manual_seed(1))
    expected_shared, expected_heads = reference_grads(model, batch, per_task, lambda_=2.0, clip=0.5, max_norm=0.05)
    x, targets = batch
    reps, preds = forward(model, x, per_task)
    losses = [torch.nn.functional.mse_loss(p, y) for p, y in zip(preds, targets)]
    model.zero_grad()
    consmtl = ConsMTL(lambda_=2.0, clip=0.5, max_norm=0.05)
    result = consmtl.backward(
        losses, model.trunk.parameters(), reps[0] if not per_task else reps, [h.parameters() for h in model.heads]
    )
    got = torch.cat([p.grad.reshape(-1) for p in model.trunk.parameters()])
    torch.testing.assert_close(got, expected_shared, rtol=1e-6, atol=1e-9)
    for head, expected in zip(model.heads, expected_heads):
        for p, e in zip(head.parameters(), expected):
            torch.testing.assert_close(p.grad, e, rtol=1e-6, atol=1e-10)
    assert result.weights is not None


def test_the_extra_term_changes_the_heads():
    model = make_model(2)
    x, targets = toy_batch(torch.Generator().manual_seed(2))
    reps, preds = forward(model, x, False)
    losses = [torch.nn.functional.mse_loss(p, y) for p, y in zip(preds, targets)]
    plain = [torch.autograd.grad(l, list(h.parameters()), retain_graph=True) for l, h in zip(losses, model.heads)]
    ConsMTL(lambda_=1.0, clip=None).backward(
        losses, model.trunk.parameters(), reps[0], [h.parameters() for h in model.heads]
    )
    assert any(not torch.allclose(h.weight.grad, g[0]) for h, g in zip(model.heads, plain))


def test_mtlagg_backward_refuses_consmtl():
    model = make_model(0)
    x, targets = toy_batch(torch.Generator().manual_seed(0))
    losses = [torch.nn.functional.mse_loss(p, y) for p, y in zip(model(x), targets)]
    with pytest.raises(
        TypeError, match=r"call consmtl.backward\(losses, shared_params, representations, task_params\)"
    ):
        mtlagg.backward(losses, model.trunk.parameters(), ConsMTL())


def test_bad_representations():
    model = make_model(0)
    x, targets = toy_batch(torch.Generator().manual_seed(0))
    reps, preds = forward(model, x, True)
    losses = [torch.nn.functional.mse_loss(p, y) for p, y in zip(preds, targets)]
    with pytest.raises(ValueError, match="representations has 2 tensors but there are 3 losses"):
        ConsMTL().backward(losses, model.trunk.parameters(), reps[:2], [h.parameters() for h in model.heads])
    with pytest.raises(ValueError, match="task_params has 2 entries but there are 3 losses"):
        ConsMTL().backward(losses, model.trunk.parameters(), reps, [h.parameters() for h in model.heads][:2])
