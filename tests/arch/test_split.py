"""The parameter split of every architecture: disjoint, complete, and true to the gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtlagg_arch import HPS, MultiTaskModel

from ._models import TASKS, VARIANTS, batch, build, targets_for, variant_id


def reached_by_each_task(model: MultiTaskModel, kind: str, multi_input: bool = False) -> dict[str, set[int]]:
    """For each task, the ids of the parameters its loss depends on (structurally)."""
    params = [p for p in model.parameters() if p.requires_grad]
    x = batch(kind)
    outputs = model({t: x for t in TASKS}) if multi_input else model(x)
    targets = targets_for(x)
    losses = model.add_regularization({t: ((outputs[t] - targets[t]) ** 2).mean() for t in TASKS})
    reached = {}
    for t in TASKS:
        grads = torch.autograd.grad(losses[t], params, retain_graph=True, allow_unused=True)
        reached[t] = {id(p) for p, g in zip(params, grads) if g is not None}
    return reached


def check_split(model: MultiTaskModel, kind: str = "vector", multi_input: bool = False) -> None:
    every = {id(p) for p in model.parameters() if p.requires_grad}
    shared = [id(p) for p in model.shared_parameters()]
    per_task = {t: [id(p) for p in model.task_parameters(t)] for t in model.task_names}
    # disjoint
    assert len(set(shared)) == len(shared)
    all_task = [i for ids in per_task.values() for i in ids]
    assert len(set(all_task)) == len(all_task), "a parameter belongs to two tasks"
    assert not set(shared) & set(all_task), "a parameter is both shared and task-specific"
    # complete
    assert set(shared) | set(all_task) == every
    assert shared, "no shared parameter"
    # true to the gradient: task parameters depend on their task only, shared ones on every task
    reached = reached_by_each_task(model, kind, multi_input)
    for t, ids in per_task.items():
        assert set(ids) <= reached[t], f"a parameter of task {t} does not reach its loss"
        for other in model.task_names:
            if other != t:
                assert not set(ids) & reached[other], f"a parameter of task {t} reaches the loss of {other}"
    for t in model.task_names:
        assert set(shared) <= reached[t], f"a shared parameter does not reach the loss of {t}"


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_split_is_disjoint_complete_and_follows_the_gradient(variant):
    name, kind, options = variant
    check_split(build(name, kind, **options), kind)


@pytest.mark.parametrize("name", ["hps", "mtan", "ple", "ltb", "cross_stitch"])
def test_split_multi_input(name):
    check_split(build(name, "vector", multi_input=True), "vector", multi_input=True)


def test_named_parameters_carry_their_owner():
    model = build("cgc")
    assert all(n.startswith("shared.") for n, _ in model.named_shared_parameters())
    assert all(n.startswith("tasks.b.") for n, _ in model.named_task_parameters("b"))
    lists = model.task_parameters_list()
    assert [len(x) for x in lists] == [len(list(model.task_parameters(t))) for t in TASKS]


def test_frozen_parameters_are_left_out():
    model = build("hps")
    frozen = next(model.shared.encoder.parameters())
    frozen.requires_grad_(False)
    assert all(p is not frozen for p in model.shared_parameters())
    model.check_parameter_split()


def test_a_module_given_to_two_tasks_is_refused():
    head = nn.Linear(4, 1)
    with pytest.raises(ValueError, match=r"tasks\.b\.head\.weight is also tasks\.a\.head\.weight"):
        HPS(nn.Linear(3, 4), {"a": head, "b": head})


def test_the_encoder_given_as_a_head_is_refused():
    encoder = nn.Linear(3, 3)
    with pytest.raises(ValueError, match=r"tasks\.a\.head\.weight is also shared\.encoder\.weight"):
        HPS(encoder, {"a": encoder, "b": nn.Linear(3, 1)})
