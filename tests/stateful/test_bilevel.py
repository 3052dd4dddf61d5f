"""MOML, AutoLambda and FORUM: value tests against independent computations, behaviour, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from mtlagg.bilevel import FORUM, MOML, AutoLambda, split_batch
from mtlagg.bilevel.forum import forum_qp

from ._toys import make_model, mse_losses, toy_batch


def batches(seed: int, count: int = 2):
    generator = torch.Generator().manual_seed(seed)
    return [toy_batch(generator) for _ in range(count)]


def functional(model, values):
    names = [n for n, _ in model.named_parameters()]
    return lambda x: functional_call(model, dict(zip(names, values)), (x,))


def flat(grads, like):
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, like)])


def real_update_grads(model, weights, batch):
    losses = torch.stack(mse_losses(model, batch))
    return torch.autograd.grad((weights.to(losses) * losses).sum(), list(model.parameters()))


class TestAutoLambda:
    def reference_hypergradient(self, model, inner, outer, lr, outer_tasks):
        params = [p.detach().clone().requires_grad_() for p in model.parameters()]
        alpha = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        w = torch.softmax(alpha, 0)
        inner_losses = torch.stack(mse_losses(functional(model, params), inner))
        grads = torch.autograd.grad((w * inner_losses).sum(), params, create_graph=True)
        virtual = [p - lr * g for p, g in zip(params, grads)]
        outer_losses = torch.stack(mse_losses(functional(model, virtual), outer))
        (hyper,) = torch.autograd.grad(outer_losses[outer_tasks].sum(), alpha)
        return hyper

    @pytest.mark.parametrize("outer_tasks", [None, [0]])
    def test_exact_hypergradient_and_update(self, outer_tasks):
        model = make_model(3)
        inner, outer = batches(3)
        tasks = [0, 1, 2] if outer_tasks is None else outer_tasks
        hyper = self.reference_hypergradient(model, inner, outer, 0.2, tasks)
        method = AutoLambda(inner_lr=0.2, weight_lr=1.0, weight_optimizer="sgd", outer_tasks=outer_tasks)
        expected_grads = real_update_grads(model, torch.softmax(-hyper, 0), inner)
        model.zero_grad()
        result = method.step(model, mse_losses, inner, outer)
        torch.testing.assert_close(method._state["logits"], -hyper)
        for p, g in zip(model.parameters(), expected_grads):
            torch.testing.assert_close(p.grad, g)
        torch.testing.assert_close(result.weights, torch.softmax(-hyper, 0))

    def test_finite_differences_agree_with_the_exact_hypergradient(self):
        model = make_model(4)
        inner, outer = batches(4)
        exact = AutoLambda(inner_lr=0.1, weight_lr=1.0, weight_optimizer="sgd")
        approx = AutoLambda(inner_lr=0.1, weight_lr=1.0, weight_optimizer="sgd", hypergradient="finite_difference")
        exact.step(model, mse_losses, inner, outer)
        approx.step(model, mse_losses, inner, outer)
        torch.testing.assert_close(approx._state["logits"], exact._state["logits"], rtol=1e-4, atol=1e-9)

    def test_virtual_passes_leave_the_buffers_alone(self):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()

        def loss_fn(forward, batch):
            x, ys = batch
            out = forward(x)
            return [nn.functional.mse_loss(out[:, i : i + 1], ys[i]) for i in range(2)]

        generator = torch.Generator().manual_seed(0)
        data = [toy_batch(generator, num_tasks=2) for _ in range(2)]
        method = AutoLambda(inner_lr=0.1)
        method.step(model, loss_fn, data[0], data[1])
        assert int(model[1].num_batches_tracked) == 1  # only the real update ran through the model


def moml_reference(model, inner, outer, lr):
    params = list(model.parameters())

    def rows(losses, wrt):
        return torch.stack(
            [flat(torch.autograd.grad(l, wrt, retain_graph=True, allow_unused=True), wrt) for l in losses]
        )

    G_in = rows(mse_losses(model, inner), params)
    w = torch.full((3,), 1 / 3, dtype=torch.float64)
    step = w @ G_in
    virtual, offset = [], 0
    for p in params:
        virtual.append((p - lr * step[offset : offset + p.numel()].view_as(p)).detach().requires_grad_())
        offset += p.numel()
    G_out = rows(mse_losses(functional(model, virtual), outer), virtual)
    J_s = torch.diag(w) - w[:, None] * w[None, :]
    H = -lr * G_out @ G_in.T @ J_s
    H = H / H.norm(dim=1, keepdim=True)
    cp = pytest.importorskip("cvxpy")
    lam = cp.Variable(3)
    cp.Problem(cp.Minimize(cp.sum_squares(H.numpy().T @ lam)), [lam >= 0, cp.sum(lam) == 1]).solve(solver=cp.CLARABEL)
    return torch.tensor(lam.value) @ H


def test_moml_matches_an_independent_computation():
    model = make_model(5)
    inner, outer = batches(5)
    combined = moml_reference(model, inner, outer, 0.1)
    method = MOML(inner_lr=0.1, weight_lr=1.0, weight_optimizer="sgd")
    expected_grads = real_update_grads(model, torch.softmax(-combined, 0), inner)
    model.zero_grad()
    method.step(model, mse_losses, inner, outer)
    torch.testing.assert_close(method._state["logits"], -combined, rtol=1e-5, atol=1e-7)
    for p, g in zip(model.parameters(), expected_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-8)


def test_forum_qp_matches_cvxpy():
    cp = pytest.importorskip("cvxpy")
    generator = torch.Generator().manual_seed(6)
    for T in (1, 2, 4):
        A = torch.randn(T + 1, 6, generator=generator, dtype=torch.float64)
        M = A @ A.T
        pi = torch.randn(T, generator=generator, dtype=torch.float64)
        c = 0.3
        w = forum_qp(M, pi, c)
        x = cp.Variable(T + 1)
        constraints = [x >= 0, cp.sum(x[:T]) == 1, x[T] >= pi.numpy() @ x[:T]]
        problem = cp.Problem(cp.Minimize(cp.sum_squares(A.numpy().T @ x) - c * x[T]), constraints)
        problem.solve(solver=cp.CLARABEL)
        value = float(w @ M @ w - c * w[T])
        assert value <= problem.value + 1e-7
        assert float(w[:T].sum()) == pytest.approx(1.0)
        assert float(w[T]) >= float(pi @ w[:T]) - 1e-9
        assert bool((w >= 0).all())


def test_forum_one_step_matches_an_independent_computation():
    model = make_model(7)
    inner, outer = batches(7)
    params = list(model.parameters())
    z = torch.full((3,), 1 / 3, dtype=torch.float64)
    inner_losses = torch.stack(mse_losses(model, inner))
    grad_f = flat(torch.autograd.grad((z * inner_losses).sum(), params), params)
    current = [p.detach().clone() for p in params]
    for _ in range(2):
        virtual = [c.clone().requires_grad_() for c in current]
        g = torch.autograd.grad((z * torch.stack(mse_losses(functional(model, virtual), inner))).sum(), virtual)
        current = [(v - 0.05 * gi).detach() for v, gi in zip(virtual, g)]
    with torch.no_grad():
        inner_k = torch.stack(mse_losses(functional(model, current), inner))
    J_s = torch.diag(z) - z[:, None] * z[None, :]
    q = torch.cat([J_s @ (inner_losses.detach() - inner_k), grad_f])
    outer_losses = mse_losses(model, outer)
    G = torch.stack(
        [flat(torch.autograd.grad(l, params, retain_graph=True, allow_unused=True), params) for l in outer_losses]
    )
    G = G / G.norm(dim=1, keepdim=True)
    A = torch.cat([torch.cat([torch.zeros(3, 3, dtype=torch.float64), G], 1), q[None]])
    pi = 0.2 - (A[:3] @ q) / (q @ q + 1e-8)
    w = forum_qp(A @ A.T, pi, 0.2 * float(q @ q + 1e-8))
    nu = max(float(w[:3] @ pi), 0.0)
    direction = w[:3] @ A[:3] + nu * q
    method = FORUM(phi=0.2, inner_step=2, inner_lr=0.05, weight_lr=1.0, weight_optimizer="sgd")
    model.zero_grad()
    method.step(model, mse_losses, inner, outer)
    torch.testing.assert_close(method._state["logits"], -direction[:3], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(flat([p.grad for p in params], params), direction[3:], rtol=1e-6, atol=1e-9)


def test_forum_lambda_is_a_moving_average():
    model = make_model(8)
    method = FORUM(inner_step=1)
    data = batches(8, 4)
    method.step(model, mse_losses, data[0], data[1])
    first = method._state["lambda"].clone()
    assert float(first.sum()) == pytest.approx(1.0)
    method.step(model, mse_losses, data[2], data[3])
    assert float(method._state["lambda"].sum()) == pytest.approx(1.0)
    assert not torch.equal(method._state["lambda"], first)


@pytest.mark.parametrize(
    "make",
    [
        lambda: AutoLambda(inner_lr=0.05, weight_lr=0.05, outer_tasks=[0]),
        lambda: MOML(inner_lr=0.05, weight_lr=0.05, outer_tasks=[0], chunk_size=1),
    ],
)
def test_the_weight_of_a_helpful_task_rises(make):
    """Task 0 (the outer task) has noisy training labels; task 1 learns the clean target with its
    own head (it helps the outer objective), task 2 is noise (it does not)."""
    model = make_model(9)
    generator = torch.Generator().manual_seed(9)

    def batch(train: bool):
        x = torch.randn(32, 5, generator=generator, dtype=torch.float64)
        y = x[:, :1] - 2 * x[:, 1:2]
        noisy = y + 2 * torch.randn(32, 1, generator=generator, dtype=torch.float64) if train else y
        return x, [noisy, y.clone(), 3 * torch.randn(32, 1, generator=generator, dtype=torch.float64)]

    method = make()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(80):
        optimizer.zero_grad()
        method.step(model, mse_losses, batch(True), batch(False))
        optimizer.step()
    weights = method.weights
    assert weights[1] > 0.45 and weights[1] > weights[2] + 0.2 and weights[1] > weights[0], weights


class TestErrors:
    def test_missing_outer_batch(self):
        model = make_model(0)
        with pytest.raises(ValueError, match="evaluates its outer objective on validation data: pass outer_batch="):
            MOML().step(model, mse_losses, batches(0, 1)[0])

    def test_split_takes_no_outer_batch(self):
        model = make_model(0)
        inner, outer = batches(0)
        with pytest.raises(ValueError, match=r"outer='split'\) takes the outer half from batch"):
            MOML(outer="split").step(model, mse_losses, inner, outer)

    def test_autolambda_needs_the_learning_rate(self):
        model = make_model(0)
        inner, outer = batches(0)
        with pytest.raises(ValueError, match="pass inner_lr="):
            AutoLambda().step(model, mse_losses, inner, outer)

    def test_number_of_tasks_is_fixed_by_the_state(self):
        model = make_model(0)
        inner, outer = batches(0)
        method = AutoLambda(inner_lr=0.1)
        method.step(model, mse_losses, inner, outer)
        two = lambda forward, batch: mse_losses(forward, batch)[:2]  # noqa: E731
        with pytest.raises(ValueError, match="loss_fn returned 2 losses but the method holds state for 3 tasks"):
            method.step(model, two, inner, outer)

    def test_bad_outer_tasks(self):
        model = make_model(0)
        inner, outer = batches(0)
        with pytest.raises(ValueError, match=r"outer_tasks \[5\] are not task indices"):
            MOML(outer_tasks=[5]).step(model, mse_losses, inner, outer)

    def test_split_batch(self):
        x = torch.arange(6)
        first, second = split_batch({"x": x, "y": [x * 2, x * 3]})
        assert torch.equal(first["x"], torch.arange(3)) and torch.equal(second["y"][1], torch.tensor([9, 12, 15]))
        with pytest.raises(ValueError, match="the same length"):
            split_batch((torch.zeros(4), torch.zeros(5)))
        with pytest.raises(ValueError, match="at least 2 samples"):
            split_batch(torch.zeros(1, 3))

    def test_split_mode_runs(self):
        model = make_model(0)
        generator = torch.Generator().manual_seed(0)
        result = MOML(outer="split").step(model, mse_losses, toy_batch(generator, n=16))
        assert result.outer_losses.shape == (3,)
