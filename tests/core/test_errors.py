"""Bad input to ``mtlagg.backward`` gets a clear error naming the task or the tensor."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtlagg
from mtlagg.aggregators import Aggregator, AggregatorInput, Mean, Needs, UPGrad
from mtlagg.errors import NonFiniteError, SolverError

from .models import flat_grad, mlp_model, mse_losses


def _losses(num_tasks: int = 3):
    model = mlp_model(num_tasks)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, generator=generator, dtype=torch.float64)
    y = torch.randn(8, num_tasks, generator=generator, dtype=torch.float64)
    z, losses = mse_losses(model, x, y)
    return model, z, losses


def test_non_scalar_loss() -> None:
    model, _, losses = _losses()
    losses[1] = losses[1].expand(3)
    with pytest.raises(ValueError, match=r"losses\[1\] \(task 1\) must be a scalar, got shape \(3,\)"):
        mtlagg.backward(losses, model.trunk.parameters(), Mean())


def test_empty_losses() -> None:
    model, _, _ = _losses()
    with pytest.raises(ValueError, match="losses is empty"):
        mtlagg.backward([], model.trunk.parameters(), Mean())
    with pytest.raises(ValueError, match="losses is empty"):
        mtlagg.backward(torch.zeros(0), model.trunk.parameters(), Mean())


def test_losses_of_the_wrong_kind() -> None:
    model, _, losses = _losses()
    with pytest.raises(TypeError, match=r"losses\[2\] \(task 2\) is a float"):
        mtlagg.backward([*losses[:2], 1.0], model.trunk.parameters(), Mean())
    with pytest.raises(ValueError, match="must be 1-D"):
        mtlagg.backward(torch.zeros(2, 2), model.trunk.parameters(), Mean())


def test_parameter_without_grad() -> None:
    model, _, losses = _losses()
    model.trunk[0].bias.requires_grad_(False)
    with pytest.raises(ValueError, match=r"0\.bias \(shape \(8,\)\) does not require grad"):
        mtlagg.backward(losses, model.trunk.named_parameters(), Mean())


def test_shared_parameter_listed_twice() -> None:
    model, _, losses = _losses()
    weight = model.trunk[0].weight
    with pytest.raises(ValueError, match=r"shared_params\[2\] \(shape \(8, 5\)\) is listed twice.*shared_params\[0\]"):
        mtlagg.backward(losses, [weight, model.trunk[0].bias, weight], Mean())


def test_shared_parameter_also_a_task_parameter() -> None:
    model, _, losses = _losses()
    shared = list(model.trunk.parameters())
    with pytest.raises(ValueError, match=r"task_params\[1\]\[0\] \(shape \(8, 5\)\) is also listed in shared_params"):
        mtlagg.backward(losses, shared, Mean(), task_params=[[], [shared[0]], []])


def test_task_params_of_the_wrong_length() -> None:
    model, _, losses = _losses()
    with pytest.raises(ValueError, match="task_params has 2 entries but there are 3 losses"):
        mtlagg.backward(losses, model.trunk.parameters(), Mean(), task_params=[[], []])


def test_non_leaf_shared_tensor_points_to_features() -> None:
    _, z, losses = _losses()
    with pytest.raises(ValueError, match=r"not a leaf tensor.*features="):
        mtlagg.backward(losses, [z], Mean())


def test_empty_shared_params() -> None:
    _, _, losses = _losses()
    with pytest.raises(ValueError, match="shared_params is empty"):
        mtlagg.backward(losses, [], Mean())


def test_aggregator_class_instead_of_instance() -> None:
    model, _, losses = _losses()
    with pytest.raises(TypeError, match=r"must be an instance, e\.g\. UPGrad\(\)"):
        mtlagg.backward(losses, model.trunk.parameters(), UPGrad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be an mtlagg Aggregator, got function"):
        mtlagg.backward(losses, model.trunk.parameters(), lambda j: j.mean(0))  # type: ignore[arg-type]


@pytest.mark.parametrize("chunk_size", [0, -1, 1.5, True])
def test_bad_chunk_size(chunk_size: object) -> None:
    model, _, losses = _losses()
    with pytest.raises(ValueError, match="chunk_size must be None or a positive int"):
        mtlagg.backward(losses, model.trunk.parameters(), UPGrad(), chunk_size=chunk_size)  # type: ignore[arg-type]


def test_bad_nonfinite_policy() -> None:
    model, _, losses = _losses()
    with pytest.raises(ValueError, match="on_nonfinite must be one of"):
        mtlagg.backward(losses, model.trunk.parameters(), UPGrad(), on_nonfinite="warn")  # type: ignore[arg-type]


def test_weight_task_params_needs_a_weighted_aggregator() -> None:
    class Median(Aggregator):
        needs = Needs.JACOBIAN

        def compute_direction(self, inputs: AggregatorInput) -> torch.Tensor:
            assert inputs.jacobian is not None
            return inputs.jacobian.median(dim=0).values

    model, _, losses = _losses()
    with pytest.raises(ValueError, match="weight_task_params=True needs a weighted aggregator; Median is not one"):
        mtlagg.backward(losses, model.trunk.parameters(), Median(), weight_task_params=True)


def test_features_path_rejects_shared_parameters_reached_directly() -> None:
    torch.manual_seed(0)
    trunk = nn.Linear(3, 3).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    z = trunk(x)
    losses = [z.pow(2).mean(), (z * trunk.bias).sum()]
    with pytest.raises(
        ValueError, match=r"shared_params\[1\] is reached by the loss of task\(s\) \[1\] without passing through"
    ):
        mtlagg.backward(losses, trunk.parameters(), UPGrad(), features=z)


@pytest.mark.parametrize("aggregator", [Mean(), UPGrad()], ids=["loss-only", "gramian"])
def test_nan_loss_raises_by_default(aggregator: Aggregator) -> None:
    model, _, losses = _losses()
    losses[2] = losses[2] * float("nan")
    with pytest.raises(NonFiniteError, match="task 2: loss is nan") as info:
        mtlagg.backward(losses, model.trunk.parameters(), aggregator)
    assert info.value.tasks == (2,)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("aggregator", [Mean(), UPGrad()], ids=["loss-only", "gramian"])
def test_nan_loss_skip_leaves_grads_untouched(aggregator: Aggregator) -> None:
    model, _, losses = _losses()
    losses[0] = losses[0] + float("inf")
    with pytest.warns(RuntimeWarning, match="skipped the step: task 0: loss is inf"):
        result = mtlagg.backward(losses, model.trunk.parameters(), aggregator, on_nonfinite="skip")
    assert result.skipped and result.nonfinite_tasks == (0,)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("aggregator", [Mean(), UPGrad()], ids=["loss-only", "gramian"])
def test_nan_loss_zero_drops_the_task(aggregator: Aggregator) -> None:
    model, _, losses = _losses()
    good = [losses[0], losses[2]]
    shared = list(model.trunk.parameters())
    jacobian = torch.stack(
        [torch.cat([g.flatten() for g in torch.autograd.grad(l, shared, retain_graph=True)]) for l in good]
    )
    losses[1] = losses[1] * float("nan")
    with pytest.warns(RuntimeWarning, match=r"dropped tasks \[1\]"):
        result = mtlagg.backward(losses, shared, aggregator, on_nonfinite="zero")
    assert result.nonfinite_tasks == (1,) and result.weights is not None
    assert result.weights[1] == 0
    full = torch.zeros(3, jacobian.shape[1], dtype=jacobian.dtype)
    full[[0, 2]] = jacobian
    if isinstance(aggregator, UPGrad):
        expected = UPGrad()(full)
    else:
        expected = full.sum(0) / 3
    torch.testing.assert_close(flat_grad(shared), expected)
    assert model.heads[1].weight.grad is None


def test_nan_gradient_names_the_task_and_the_tensor() -> None:
    torch.manual_seed(0)
    trunk = nn.Linear(3, 3).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    z = trunk(x)
    losses = [z.pow(2).mean(), torch.sqrt(z - z.detach()).sum() * 0]  # finite loss, NaN gradient
    with pytest.raises(
        NonFiniteError, match=r"task 1: its gradient with respect to weight \(shape \(3, 3\)\) holds NaN"
    ):
        mtlagg.backward(losses, trunk.named_parameters(), UPGrad(), retain_graph=True)
    with pytest.raises(NonFiniteError, match="aggregated gradient holds NaN or Inf for weight"):
        mtlagg.backward(losses, trunk.named_parameters(), Mean(), retain_graph=True)
    with pytest.warns(RuntimeWarning, match=r"dropped tasks \[1\]"):
        mtlagg.backward(losses, trunk.named_parameters(), UPGrad(), on_nonfinite="zero", retain_graph=True)
    assert torch.isfinite(trunk.weight.grad).all()
    trunk.zero_grad()
    with pytest.raises(SolverError, match="NaN or Inf entries"):
        mtlagg.backward(losses, trunk.named_parameters(), UPGrad(), on_nonfinite="ignore", retain_graph=True)
    result = mtlagg.backward(losses, trunk.named_parameters(), Mean(), on_nonfinite="ignore")
    assert not torch.isfinite(trunk.weight.grad).all() and result.nonfinite_tasks == ()


def test_gramian_helpers_need_a_gramian() -> None:
    model, _, losses = _losses()
    result = mtlagg.backward(losses, model.trunk.parameters(), Mean())
    with pytest.raises(ValueError, match="compute_gramian=True"):
        result.task_norms()
