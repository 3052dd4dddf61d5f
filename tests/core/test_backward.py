"""``mtlagg.backward`` against per-task ``autograd.grad`` plus the aggregator applied by hand."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import mtlagg
from mtlagg.aggregators import (
    MGDA,
    Aggregator,
    AggregatorInput,
    CAGrad,
    Constant,
    Mean,
    Needs,
    PCGrad,
    Random,
    Sum,
    UPGrad,
)

from .models import MultiHead, flat_grad, mlp_model, mse_losses, reference_jacobian, reference_update


class CoordinateMedian(Aggregator):
    """An unweighted aggregator that needs the whole Jacobian (test-only)."""

    needs = Needs.JACOBIAN

    def compute_direction(self, inputs: AggregatorInput) -> Tensor:
        assert inputs.jacobian is not None
        return inputs.jacobian.median(dim=0).values


AGGREGATORS: dict[str, Callable[[], Aggregator]] = {
    "mean": Mean,
    "sum": Sum,
    "constant": lambda: Constant([0.5, 2.0, 1.0]),
    "random": lambda: Random(kind="gradient", generator=torch.Generator().manual_seed(3)),
    "upgrad": UPGrad,
    "mgda": MGDA,
    "mgda-loss": lambda: MGDA("loss+"),
    "cagrad": lambda: CAGrad(c=0.5),
    "pcgrad": lambda: PCGrad(generator=torch.Generator().manual_seed(3)),
    "median": CoordinateMedian,
}


def _data(num_tasks: int = 3, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(16, 5, generator=generator, dtype=dtype), torch.randn(
        16, num_tasks, generator=generator, dtype=dtype
    )


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
@pytest.mark.parametrize("chunk_size", [None, 1, 2, 64])
def test_parameter_path_matches_hand_computation(name: str, chunk_size: int | None) -> None:
    model = mlp_model()
    x, y = _data()
    shared = list(model.trunk.parameters())
    _, losses = mse_losses(model, x, y)
    expected, _ = reference_update(losses, shared, AGGREGATORS[name])
    heads = [torch.autograd.grad(loss, list(h.parameters()), retain_graph=True) for loss, h in zip(losses, model.heads)]
    result = mtlagg.backward(losses, shared, AGGREGATORS[name](), chunk_size=chunk_size)
    torch.testing.assert_close(flat_grad(shared), expected, rtol=1e-9, atol=1e-12)
    for head, grads in zip(model.heads, heads):
        for p, g in zip(head.parameters(), grads):
            torch.testing.assert_close(p.grad, g)
    assert result.losses.shape == (3,)


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_feature_path_matches_hand_computation(name: str) -> None:
    model = mlp_model()
    x, y = _data()
    shared = list(model.trunk.parameters())
    z, losses = mse_losses(model, x, y)
    feature_jacobian = reference_jacobian(losses, [z])
    values = torch.stack([loss.detach() for loss in losses])
    direction = AGGREGATORS[name]()(feature_jacobian, losses=values).view_as(z)
    expected = torch.cat([g.flatten() for g in torch.autograd.grad(z, shared, direction, retain_graph=True)])
    heads = [torch.autograd.grad(loss, list(h.parameters()), retain_graph=True) for loss, h in zip(losses, model.heads)]
    mtlagg.backward(losses, shared, AGGREGATORS[name](), features=z)
    torch.testing.assert_close(flat_grad(shared), expected, rtol=1e-9, atol=1e-12)
    for head, grads in zip(model.heads, heads):
        for p, g in zip(head.parameters(), grads):
            torch.testing.assert_close(p.grad, g)


def test_several_feature_tensors_and_tasks_reaching_only_some() -> None:
    torch.manual_seed(0)
    trunk = nn.Linear(4, 6).double()
    x = torch.randn(7, 4, dtype=torch.float64)
    h = trunk(x)
    z1, z2 = torch.tanh(h[:, :3]), torch.sin(h[:, 3:])
    w = [torch.randn(3, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    losses = [(z1 @ w[0]).pow(2).mean(), (z2 @ w[1]).pow(2).mean(), (z1 @ w[2]).mean() + (z2 @ w[2]).pow(3).mean()]
    shared = list(trunk.parameters())
    jacobian = reference_jacobian(losses, [z1, z2])
    assert torch.all(jacobian[0, 21:] == 0) and torch.all(jacobian[1, :21] == 0)
    direction = UPGrad()(jacobian)
    expected = torch.autograd.grad(
        [z1, z2], shared, [direction[:21].view_as(z1), direction[21:].view_as(z2)], retain_graph=True
    )
    mtlagg.backward(losses, shared, UPGrad(), features=[z1, z2])
    torch.testing.assert_close(flat_grad(shared), torch.cat([g.flatten() for g in expected]))
    assert all(p.grad is not None for p in w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_follow_the_model(dtype: torch.dtype) -> None:
    model = mlp_model(dtype=dtype)
    x, y = _data(dtype=dtype)
    shared = list(model.trunk.parameters())
    _, losses = mse_losses(model, x, y)
    expected, _ = reference_update(losses, shared, UPGrad)
    result = mtlagg.backward(losses, shared, UPGrad())
    assert all(p.grad.dtype == dtype for p in shared)
    assert result.weights is not None and result.gramian is not None
    tolerance = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(flat_grad(shared), expected, rtol=tolerance, atol=tolerance)


def test_gradients_accumulate_like_tensor_backward() -> None:
    model = mlp_model()
    x, y = _data()
    shared = list(model.trunk.parameters())
    _, losses = mse_losses(model, x, y)
    once, _ = reference_update(losses, shared, UPGrad)
    mtlagg.backward(losses, shared, UPGrad())
    _, losses = mse_losses(model, x, y)
    mtlagg.backward(losses, shared, UPGrad())
    torch.testing.assert_close(flat_grad(shared), 2 * once)


def test_batchnorm_and_dropout_use_the_graph_of_the_forward_pass() -> None:
    torch.manual_seed(0)
    model = mlp_model(batchnorm=True)
    model.trunk.insert(3, nn.Dropout(0.3))
    model.train()
    x, y = _data()
    shared = list(model.trunk.parameters())
    _, losses = mse_losses(model, x, y)
    expected, _ = reference_update(losses, shared, MGDA)
    mtlagg.backward(losses, shared, MGDA())
    torch.testing.assert_close(flat_grad(shared), expected)


@pytest.mark.parametrize("chunk_size", [None, 1, 64])
def test_lstm_trunk(chunk_size: int | None) -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 5, batch_first=True).double()
    heads = [nn.Linear(5, 1).double() for _ in range(3)]
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    out, _ = lstm(x)
    losses = [h(out[:, -1]).pow(2).mean() for h in heads]
    shared = list(lstm.parameters())
    expected, _ = reference_update(losses, shared, UPGrad)
    mtlagg.backward(losses, shared, UPGrad(), chunk_size=chunk_size)
    torch.testing.assert_close(flat_grad(shared), expected)


def test_one_task_is_the_plain_gradient() -> None:
    model = mlp_model(num_tasks=1)
    x, y = _data(num_tasks=1)
    shared = list(model.trunk.parameters())
    _, losses = mse_losses(model, x, y)
    expected = torch.cat([g.flatten() for g in torch.autograd.grad(losses[0], shared, retain_graph=True)])
    result = mtlagg.backward(losses, shared, UPGrad())
    torch.testing.assert_close(flat_grad(shared), expected)
    torch.testing.assert_close(result.weights, torch.ones(1, dtype=torch.float64))


def test_losses_as_one_vector() -> None:
    model = mlp_model()
    x, y = _data()
    shared = list(model.trunk.parameters())
    _, losses = mse_losses(model, x, y)
    expected, _ = reference_update(losses, shared, CAGrad)
    mtlagg.backward(torch.stack(losses), shared, CAGrad())
    torch.testing.assert_close(flat_grad(shared), expected)


def test_a_loss_reaching_no_shared_parameter_is_a_zero_row() -> None:
    model = mlp_model()
    x, y = _data()
    shared = list(model.trunk.parameters())
    _, losses = mse_losses(model, x, y)
    extra = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
    losses = [*losses, extra**2, torch.tensor(1.0, dtype=torch.float64)]
    result = mtlagg.backward(losses, shared, UPGrad(), retain_graph=True)
    assert result.gramian is not None
    torch.testing.assert_close(result.gramian[3:], torch.zeros(2, 5, dtype=torch.float64))
    torch.testing.assert_close(extra.grad, torch.tensor(4.0, dtype=torch.float64))


def test_explicit_task_params_get_only_their_own_task() -> None:
    torch.manual_seed(0)
    trunk = nn.Linear(3, 4).double()
    shared_head = nn.Linear(4, 1).double()  # reached by both tasks, declared as task 0's
    x = torch.randn(5, 3, dtype=torch.float64)
    z = trunk(x)
    losses = [shared_head(z).pow(2).mean(), (shared_head(z) * 3).sum()]
    own = torch.autograd.grad(losses[0], list(shared_head.parameters()), retain_graph=True)
    mtlagg.backward(losses, trunk.parameters(), Mean(), task_params=[shared_head.parameters(), []])
    for p, g in zip(shared_head.parameters(), own):
        torch.testing.assert_close(p.grad, g)


def test_default_task_params_get_the_sum_of_the_losses_reaching_them() -> None:
    torch.manual_seed(0)
    trunk = nn.Linear(3, 4).double()
    common = nn.Linear(4, 1).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    z = trunk(x)
    losses = [common(z).pow(2).mean(), (common(z) * 3).sum()]
    total = torch.autograd.grad(losses[0] + losses[1], list(common.parameters()), retain_graph=True)
    mtlagg.backward(losses, trunk.parameters(), UPGrad())
    for p, g in zip(common.parameters(), total):
        torch.testing.assert_close(p.grad, g)


@pytest.mark.parametrize("name", ["mean", "upgrad", "cagrad"])
def test_weight_task_params_scales_heads_by_the_weights(name: str) -> None:
    model = mlp_model()
    x, y = _data()
    shared = list(model.trunk.parameters())
    _, losses = mse_losses(model, x, y)
    heads = [torch.autograd.grad(loss, list(h.parameters()), retain_graph=True) for loss, h in zip(losses, model.heads)]
    result = mtlagg.backward(losses, shared, AGGREGATORS[name](), weight_task_params=True)
    assert result.weights is not None
    for w, head, grads in zip(result.weights, model.heads, heads):
        for p, g in zip(head.parameters(), grads):
            torch.testing.assert_close(p.grad, w * g)


def test_compute_gramian_with_a_loss_only_aggregator() -> None:
    model = mlp_model()
    x, y = _data()
    shared = list(model.trunk.parameters())
    _, losses = mse_losses(model, x, y)
    jacobian = reference_jacobian(losses, shared)
    plain = mtlagg.backward(losses, shared, Mean(), retain_graph=True)
    assert plain.gramian is None
    for p in shared:
        p.grad = None
    result = mtlagg.backward(losses, shared, Mean(), compute_gramian=True)
    torch.testing.assert_close(result.gramian, jacobian @ jacobian.T)
    torch.testing.assert_close(result.task_norms(), jacobian.norm(dim=1))
    cosines = result.cosine_similarities()
    torch.testing.assert_close(cosines[0, 1], torch.nn.functional.cosine_similarity(jacobian[0], jacobian[1], dim=0))
    torch.testing.assert_close(flat_grad(shared), jacobian.mean(dim=0))


def test_named_parameters_are_accepted() -> None:
    model = mlp_model()
    x, y = _data()
    _, losses = mse_losses(model, x, y)
    expected, _ = reference_update(losses, list(model.trunk.parameters()), UPGrad)
    mtlagg.backward(losses, model.trunk.named_parameters(), UPGrad())
    torch.testing.assert_close(flat_grad(list(model.trunk.parameters())), expected)


def test_retain_graph_allows_a_second_call() -> None:
    model = mlp_model()
    x, y = _data()
    _, losses = mse_losses(model, x, y)
    mtlagg.backward(losses, model.trunk.parameters(), UPGrad(), retain_graph=True)
    mtlagg.backward(losses, model.trunk.parameters(), UPGrad())
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        mtlagg.backward(losses, model.trunk.parameters(), UPGrad())


def test_jacobian_and_gramian_functions() -> None:
    model = mlp_model()
    x, y = _data()
    shared = list(model.trunk.parameters())
    z, losses = mse_losses(model, x, y)
    expected = reference_jacobian(losses, shared)
    torch.testing.assert_close(mtlagg.jacobian(losses, shared, retain_graph=True), expected)
    torch.testing.assert_close(mtlagg.gramian(losses, shared, chunk_size=1, retain_graph=True), expected @ expected.T)
    torch.testing.assert_close(mtlagg.jacobian(losses, [z], retain_graph=True), reference_jacobian(losses, [z]))


def test_heads_are_back_propagated_once_per_task() -> None:
    """The two-phase engine runs each task's head once, not T times (TorchJD's vmap over losses does)."""
    calls = {"count": 0}

    class Counting(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z: Tensor) -> Tensor:  # type: ignore[override]
            return z.clone()

        @staticmethod
        def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
            calls["count"] += 1
            return grad

    model = mlp_model(num_tasks=4)
    x, y = _data(num_tasks=4)
    z = model.trunk(x)
    losses = [((Counting.apply(head(z)).squeeze(-1) - y[:, i]) ** 2).mean() for i, head in enumerate(model.heads)]
    mtlagg.backward(losses, model.trunk.parameters(), UPGrad())
    assert calls["count"] == 4


def test_model_with_heads_in_a_module() -> None:
    model = MultiHead(nn.Sequential(nn.Linear(5, 4), nn.ReLU()), 4, 2).double()
    x, y = _data(num_tasks=2)
    _, losses = mse_losses(model, x, y)
    expected, _ = reference_update(losses, list(model.trunk.parameters()), UPGrad)
    mtlagg.backward(losses, model.trunk.parameters(), UPGrad())
    torch.testing.assert_close(flat_grad(list(model.trunk.parameters())), expected)


@pytest.mark.parametrize(
    ("make", "weighted"),
    [(Mean, False), (UPGrad, False), (lambda: Random(kind="loss"), True), (lambda: Random(kind="gradient"), False)],
)
def test_heads_follow_the_method_by_default(make: Callable[[], Aggregator], weighted: bool) -> None:
    """Loss-weighting methods minimise sum_i w_i L_i, heads included; gradient methods leave heads alone."""
    model = mlp_model()
    x, y = _data()
    _, losses = mse_losses(model, x, y)
    heads = [torch.autograd.grad(loss, list(h.parameters()), retain_graph=True) for loss, h in zip(losses, model.heads)]
    result = mtlagg.backward(losses, model.trunk.parameters(), make())
    assert result.weights is not None
    for w, head, grads in zip(result.weights, model.heads, heads):
        for p, g in zip(head.parameters(), grads):
            torch.testing.assert_close(p.grad, w * g if weighted else g)


class _NoVmapSquare(torch.autograd.Function):
    """A custom op whose backward leaves torch (as third-party kernels do): it cannot be vmapped."""

    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(z)
        return z * z

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (z,) = ctx.saved_tensors
        return torch.from_numpy((2 * z * grad).numpy())


def test_models_vmap_cannot_handle_work_by_default_on_cpu_and_fail_clearly_when_vectorised() -> None:
    model = mlp_model()
    x, y = _data()

    def losses() -> list[Tensor]:
        z = _NoVmapSquare.apply(model.trunk(x))
        return [((head(z).squeeze(-1) - y[:, i]) ** 2).mean() for i, head in enumerate(model.heads)]

    current = losses()
    expected, _ = reference_update(current, list(model.trunk.parameters()), UPGrad)
    mtlagg.backward(current, model.trunk.parameters(), UPGrad())
    torch.testing.assert_close(flat_grad(list(model.trunk.parameters())), expected)
    with pytest.raises(mtlagg.VmapError, match="pass chunk_size=1"):
        mtlagg.backward(losses(), model.trunk.parameters(), UPGrad(), chunk_size=64)
