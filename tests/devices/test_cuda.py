"""The same answers on a CUDA GPU as on the CPU, with the outputs on the inputs' device.

Skipped where no GPU is present (CI); run on a GPU machine with ``python -m pytest tests/devices``.
Every stateless aggregator of the property suite, the dual-cone solvers, ``mtlagg.backward`` (exact
Jacobian, vectorised over the tasks, and the ``features=`` path) and the single-batch stateful
methods in a short training loop.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import mtlagg
from mtlagg.aggregators import MGDA, CAGrad, Mean, NashMTL, PCGrad, UPGrad, get_solver_device, lookup, set_solver_device
from mtlagg.solvers import solve_dual_cone, solve_dual_cone_diagonal

from ..aggregators._matrices import conflicting, positive_losses, sample
from ..aggregators._specs import SPEC_IDS, SPECS, Spec
from ..core.models import flat_grad, mlp_model, mse_losses
from ..stateful._toys import make_model, train_single_batch
from ..stateful.test_api import SINGLE_BATCH

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GPU = torch.device("cuda")


def _call(spec: Spec, J: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        if spec.may_warn:
            warnings.simplefilter("ignore", RuntimeWarning)
        return spec.make(J.shape[0])(J, losses=losses)


@pytest.fixture(params=["cpu", "input"])
def solver_device(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Both placements of the small solves (see ``set_solver_device``)."""
    before = get_solver_device()
    set_solver_device(request.param)
    yield request.param
    set_solver_device(before)


@pytest.mark.parametrize("case", ["conflicting-8x30", "conflicting-20x60", "rank2-6x25"])
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_stateless_aggregators_agree_with_the_cpu(spec: Spec, case: str, solver_device: str) -> None:
    J = sample(case)
    if J.shape[0] < spec.min_tasks:
        pytest.skip(f"{spec.id} needs at least {spec.min_tasks} tasks")
    losses = positive_losses(J.shape[0])
    for dtype, tolerance in ((torch.float64, 1e-7), (torch.float32, 2e-3)):
        on_cpu = _call(spec, J.to(dtype), losses.to(dtype))
        on_gpu = _call(spec, J.to(GPU, dtype), losses.to(GPU, dtype))
        assert on_gpu.device.type == "cuda" and on_gpu.dtype == dtype and on_gpu.shape == on_cpu.shape
        scale = 1.0 + float(on_cpu.abs().max())
        assert (on_gpu.cpu() - on_cpu).abs().max() <= tolerance * scale, (spec.id, dtype)


@pytest.mark.parametrize(("T", "rank"), [(6, None), (40, None), (40, 12), (96, None)])
def test_dual_cone_solvers_agree_with_the_cpu(T: int, rank: int | None) -> None:
    g = torch.Generator().manual_seed(T + (rank or 0))
    J = conflicting(T, 3 * T, g)
    if rank is not None:
        J = torch.randn(T, rank, generator=g, dtype=torch.float64) @ J[:rank]
    G = J @ J.T
    scales = torch.full((T,), 1.0 / T, dtype=torch.float64)
    X = solve_dual_cone_diagonal(G, scales)
    X_gpu = solve_dual_cone_diagonal(G.to(GPU), scales.to(GPU))
    assert X_gpu.device.type == "cuda"
    assert (X_gpu.cpu() - X).abs().max() <= 1e-9 * (1 + float(X.abs().max()))
    U = torch.rand(3, T, generator=g, dtype=torch.float64)
    Y = solve_dual_cone(G, U)
    assert (solve_dual_cone(G.to(GPU), U.to(GPU)).cpu() - Y).abs().max() <= 1e-9 * (1 + float(Y.abs().max()))


@pytest.mark.parametrize("make", [UPGrad, MGDA, CAGrad, NashMTL, Mean, lambda: PCGrad(generator=_fixed())])
@pytest.mark.parametrize("mode", ["exact", "vmap", "features"])
def test_backward_on_a_gpu_model_matches_the_cpu(make, mode: str, solver_device: str) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    cpu_model = mlp_model(num_tasks=4)
    gpu_model = copy.deepcopy(cpu_model).to(GPU)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 5, generator=g, dtype=torch.float64), torch.randn(16, 4, generator=g, dtype=torch.float64)
    grads = []
    for model, device in ((cpu_model, torch.device("cpu")), (gpu_model, GPU)):
        z, losses = mse_losses(model, x.to(device), y.to(device))
        kwargs: dict[str, object] = {}
        if mode == "vmap":
            kwargs["chunk_size"] = None
        if mode == "features":
            kwargs["features"] = z
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mtlagg.backward(losses, list(model.trunk.parameters()), make(), **kwargs)  # type: ignore[arg-type]
        grads.append(flat_grad(list(model.trunk.parameters())))
    on_cpu, on_gpu = grads
    assert on_gpu.device.type == "cuda"
    assert (on_gpu.cpu() - on_cpu).abs().max() <= 1e-8 * (1 + float(on_cpu.abs().max()))


def _fixed() -> torch.Generator:
    return torch.Generator().manual_seed(3)


#: Methods whose small sequential ``T x T`` loops (and their memory) live on the CPU by design.
HOST_STATE = {"gradvac", "pcd"}


@pytest.mark.parametrize("name", SINGLE_BATCH)
def test_stateful_methods_train_on_a_gpu_like_on_the_cpu(name: str) -> None:
    """Three optimiser steps; the method's state stays on the GPU (on the CPU for the methods of
    ``HOST_STATE``) and the parameters match the CPU run (float64)."""
    results = []
    for device in (torch.device("cpu"), GPU):
        model = make_model(0).to(device)
        aggregator = lookup(name)()
        train_single_batch(model, aggregator, name, steps=3, device=device)
        state = aggregator.state_dict()
        home = "cpu" if name in HOST_STATE else device.type
        for value in _tensors(state):
            assert value.device.type == home, (name, value.device)
        results.append(torch.cat([p.detach().flatten().cpu() for p in model.parameters()]))
    assert torch.allclose(results[0], results[1], rtol=1e-7, atol=1e-9), name


def _tensors(state: object) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state] if state.is_floating_point() else []
    if isinstance(state, dict):
        return [t for value in state.values() for t in _tensors(value)]
    if isinstance(state, (list, tuple)):
        return [t for value in state for t in _tensors(value)]
    return []


@pytest.mark.parametrize("where", ["cpu", "input"])
def test_solver_device_decides_where_the_weights_are_computed(where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``"cpu"``: the solver sees CPU copies of the Gramian and the losses; ``"input"``: the GPU
    tensors. Either way the weights come back on the GPU, and the engine follows the setting."""
    seen: list[torch.device] = []
    original = UPGrad.compute_weights

    def spy(self, inputs):  # type: ignore[no-untyped-def]
        seen.append(inputs.gramian.device)
        return original(self, inputs)

    monkeypatch.setattr(UPGrad, "compute_weights", spy)
    before = get_solver_device()
    set_solver_device(where)
    try:
        J = sample("conflicting-8x30").to(GPU)
        direction = UPGrad()(J)
        weights = UPGrad().weights(J @ J.T)
        model = mlp_model(num_tasks=3).to(GPU)
        x, y = torch.randn(8, 5, dtype=torch.float64, device=GPU), torch.randn(8, 3, dtype=torch.float64, device=GPU)
        _, losses = mse_losses(model, x, y)
        mtlagg.backward(losses, list(model.trunk.parameters()), UPGrad())
    finally:
        set_solver_device(before)
    assert direction.device.type == "cuda" and weights.device.type == "cuda"
    assert [d.type for d in seen] == ["cpu" if where == "cpu" else "cuda"] * 3
