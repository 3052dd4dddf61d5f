"""What each architecture computes, checked by hand on small instances, and its argument errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import mtlagg
from mtlagg.aggregators import Constant, UPGrad
from mtlagg_arch import CGC, HPS, LTB, MTAN, PLE, CrossStitch, DSelectK, MMoE
from mtlagg_arch._gates import DSelectKGate, smooth_step

from ._models import TASKS, batch, build


def linear_heads(width: int, tasks=TASKS) -> dict[str, nn.Module]:
    return {t: nn.Linear(width, 1) for t in tasks}


# -- cross-stitch -------------------------------------------------------------------------------
def test_cross_stitch_starts_close_to_identity():
    model = CrossStitch([nn.Linear(3, 4), nn.Linear(4, 4)], linear_heads(4))
    expected = torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])
    for s in (0, 1):
        torch.testing.assert_close(model.stitch_matrix(s), expected)
    two = CrossStitch([nn.Linear(3, 4)], linear_heads(4, ("a", "b")), self_weight=0.8)
    torch.testing.assert_close(two.stitch_matrix(0), torch.tensor([[0.8, 0.2], [0.2, 0.8]]))
    assert len(list(model.stitch_parameters())) == 1 + 3


def test_cross_stitch_computes_the_mixture_by_hand():
    torch.manual_seed(0)
    model = CrossStitch([nn.Linear(3, 4), nn.Linear(4, 2)], linear_heads(2), stitch_after=[0])
    with torch.no_grad():
        model.tasks["b"].stitch.copy_(torch.tensor([0.2, 0.5, 0.3]))
    x = torch.randn(5, 3)
    columns = [model.shared.columns[0][j](x) for j in range(3)]
    mixed = 0.2 * columns[0] + 0.5 * columns[1] + 0.3 * columns[2]
    expected = model.tasks["b"].head(model.tasks["b"].stages[0](mixed))
    torch.testing.assert_close(model(x)["b"], expected)
    assert len(model.tasks["b"].stages) == 1  # the stages after the last unit belong to the task


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stitch_after": []}, "at least one cross-stitch unit"),
        ({"stitch_after": [2]}, r"not stage indices in \[0, 2\)"),
        ({"self_weight": 1.5}, r"self_weight must be in \[0, 1\]"),
    ],
)
def test_cross_stitch_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CrossStitch([nn.Linear(3, 4), nn.Linear(4, 4)], linear_heads(4), **kwargs)


def test_stage_factory_must_build_new_modules():
    stage = nn.Linear(3, 4)
    with pytest.raises(ValueError, match="returned the same module twice"):
        CrossStitch([lambda: stage], linear_heads(4))


# -- MMoE / CGC ---------------------------------------------------------------------------------
def test_mmoe_computes_the_gated_mixture_by_hand():
    torch.manual_seed(0)
    model = MMoE(nn.Linear(3, 4), 2, linear_heads(4), gate_input="input", gate_in_features=3)
    x = torch.randn(6, 3)
    experts = [e(x) for e in model.shared.experts.experts]
    gate = model.tasks["c"].gate.linear
    w = torch.softmax(x @ gate.weight.T + gate.bias, dim=-1)
    expected = model.tasks["c"].head(w[:, :1] * experts[0] + w[:, 1:] * experts[1])
    torch.testing.assert_close(model(x)["c"], expected)


def test_gate_on_the_experts_reads_their_pooled_mean():
    torch.manual_seed(0)
    expert = nn.Conv2d(2, 3, 1)
    heads = {t: nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 1)) for t in TASKS}
    model = MMoE(expert, 2, heads, gate_input="experts", gate_in_features=3)
    x = torch.randn(2, 2, 4, 4)
    stack = torch.stack([e(x) for e in model.shared.experts.experts], dim=1)
    routing = stack.mean(dim=1).mean(dim=(2, 3))
    gate = model.tasks["a"].gate.linear
    w = torch.softmax(gate(routing), dim=-1)
    expected = model.tasks["a"].head((w[:, :, None, None, None] * stack).sum(1))
    torch.testing.assert_close(model(x)["a"], expected)


def test_gate_errors():
    with pytest.raises(ValueError, match="gate_in_features is required"):
        MMoE(nn.Linear(3, 4), 2, linear_heads(4))
    with pytest.raises(ValueError, match="gate_input must be 'input', 'experts'"):
        MMoE(nn.Linear(3, 4), 2, linear_heads(4), gate_input="pixels", gate_in_features=3)
    model = MMoE(nn.Linear(3, 4), 2, linear_heads(4), gate_input="input", gate_in_features=7)
    with pytest.raises(ValueError, match=r"routing vector has shape \(2, 3\) but gate_in_features is 7"):
        model(torch.randn(2, 3))
    with pytest.raises(ValueError, match="num_experts must be a positive int"):
        MMoE(nn.Linear(3, 4), 0, linear_heads(4), gate_in_features=3)


def test_cgc_counts_and_errors():
    model = CGC(nn.Linear(3, 4), linear_heads(4), num_shared_experts=2, num_task_experts={"a": 0, "b": 1, "c": 3},
                gate_in_features=3)  # fmt: skip
    assert [model.tasks[t].gate.linear.out_features for t in TASKS] == [2, 3, 5]
    assert model.tasks["a"].experts is None
    assert model(torch.randn(2, 3))["c"].shape == (2, 1)
    with pytest.raises(ValueError, match=r"missing \['c'\], unknown \['d'\]"):
        CGC(nn.Linear(3, 4), linear_heads(4), num_task_experts={"a": 1, "b": 1, "d": 1}, gate_in_features=3)
    with pytest.raises(ValueError, match="num_shared_experts must be an int >= 1"):
        CGC(nn.Linear(3, 4), linear_heads(4), num_shared_experts=0, gate_in_features=3)


# -- PLE ----------------------------------------------------------------------------------------
def test_ple_with_one_level_owns_what_cgc_owns():
    ple = PLE([nn.Linear(3, 4)], linear_heads(4), num_shared_experts=2, num_task_experts=1, gate_in_features=3)
    cgc = CGC(nn.Linear(3, 4), linear_heads(4), num_shared_experts=2, num_task_experts=1, gate_in_features=3)
    count = lambda ps: sum(p.numel() for p in ps)  # noqa: E731
    assert count(ple.shared_parameters()) == count(cgc.shared_parameters())
    assert count(ple.task_parameters("a")) == count(cgc.task_parameters("a"))


def test_ple_has_a_shared_gate_over_all_experts_except_at_the_last_level():
    model = PLE([nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 4)], linear_heads(4), num_shared_experts=2,
                num_task_experts=1, gate_input="experts", gate_in_features=4)  # fmt: skip
    levels = model.shared.levels
    assert [levels[k].gate.linear.out_features for k in (0, 1)] == [2 + 3 * 1] * 2
    assert not hasattr(levels[2], "gate")
    # level-0 task gates are shared (their outputs feed the shared gate of level 1), the
    # level-1 and level-2 ones belong to the tasks
    assert set(levels[0].task_gates) == set(TASKS)
    assert sorted(model.tasks["a"].levels) == ["1", "2"]
    assert hasattr(model.tasks["a"].levels["2"], "experts")


def test_ple_errors():
    with pytest.raises(ValueError, match="gate_in_features has 2 entries but there are 3 levels"):
        PLE([nn.Linear(3, 3)] * 3, linear_heads(3), gate_in_features=[3, 3])
    with pytest.raises(ValueError, match=r"num_task_experts must hold ints >= 1"):
        PLE([nn.Linear(3, 3)], linear_heads(3), num_task_experts=0, gate_in_features=3)
    with pytest.raises(ValueError, match="stages is empty"):
        PLE([], linear_heads(3), gate_in_features=3)


# -- MTAN ---------------------------------------------------------------------------------------
def test_mtan_attention_by_hand_on_one_stage():
    torch.manual_seed(0)
    stage = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
    model = MTAN([stage], linear_heads(4), channels=[4], spatial=False).eval()
    x = torch.randn(5, 3)
    u = stage[0](x)
    p = torch.tanh(u)
    expected = model.tasks["b"].head(model.tasks["b"].attention[0](u) * p)
    torch.testing.assert_close(model(x)["b"], expected)


def test_mtan_shared_blocks_are_shared_and_in_the_representation():
    model = build("mtan")
    model(batch())
    transfer = {id(p) for p in model.shared.transfers.parameters()}
    assert transfer and transfer <= {id(p) for p in model.shared_parameters()}
    assert transfer <= {id(t) for t in model.representation}
    own = build("mtan", share_transfer=False)
    own(batch())
    assert not hasattr(own.shared, "transfers")
    assert all(not t.is_leaf for t in own.representation)
    assert {id(p) for p in own.tasks["a"].transfers.parameters()} <= {id(p) for p in own.task_parameters("a")}


def test_mtan_needs_channels_for_a_sequence_of_stages():
    with pytest.raises(ValueError, match="channels is required"):
        MTAN([nn.Linear(3, 4)], linear_heads(4))


# -- LTB ----------------------------------------------------------------------------------------
def small_ltb(**kwargs) -> LTB:
    torch.manual_seed(0)
    stages = [lambda: nn.Linear(3, 4), nn.Sequential(nn.Linear(4, 4), nn.Tanh())]
    return LTB(stages, linear_heads(4), widths=[2, 3], **kwargs)


def test_ltb_evaluation_takes_the_most_likely_parent():
    model = small_ltb()
    with torch.no_grad():
        model.tasks["a"].logits.copy_(torch.tensor([0.3, -1.0]))
        model.tasks["b"].logits.copy_(torch.tensor([-2.0, 0.5]))
    model.eval()
    x = torch.randn(4, 3)
    parents = [node(x) for node in model.shared.nodes[0]]
    for t, chosen in (("a", 0), ("b", 1)):
        branch = model.tasks[t]
        torch.testing.assert_close(model(x)[t], branch.head(branch.node(parents[chosen])))
    assert model.parents() == [[0, 1, 0]]
    torch.testing.assert_close(model(x)["a"], model(x)["a"], rtol=0, atol=0)


def test_ltb_training_samples_and_warm_up_averages():
    model = small_ltb(temperature=5.0)
    x = torch.randn(4, 3)
    outputs = {tuple(model(x)["c"].flatten().tolist()) for _ in range(20)}
    assert len(outputs) == 2  # both parents get sampled at a high temperature
    model.set_branching("uniform")
    parents = [node(x) for node in model.shared.nodes[0]]
    branch = model.tasks["c"]
    torch.testing.assert_close(model(x)["c"], branch.head(branch.node((parents[0] + parents[1]) / 2)))


def test_ltb_schedule_is_saved_and_validated():
    model = small_ltb()
    model.set_temperature(0.25)
    model.set_branching("uniform")
    other = small_ltb()
    other.load_state_dict(model.state_dict())
    assert (other.temperature, other.branching) == (0.25, "uniform")
    with pytest.raises(ValueError, match="temperature must be a finite positive number"):
        model.set_temperature(0.0)
    with pytest.raises(ValueError, match=r"branching must be one of \('gumbel', 'uniform', 'argmax'\)"):
        model.set_branching("soft")


@pytest.mark.parametrize(
    ("stages", "widths", "message"),
    [
        (1, None, "at least 2 stages"),
        (2, [1, 2], r"one node per task \(3\), got widths\[-1\]=2"),
        (2, [1, 2, 3], "widths has 3 entries but there are 2 stages"),
    ],
)
def test_ltb_errors(stages, widths, message):
    with pytest.raises(ValueError, match=message):
        LTB([nn.Linear(3, 3)] * stages, linear_heads(3), widths=widths)


# -- DSelect-k ----------------------------------------------------------------------------------
def test_smooth_step_closed_form():
    t = torch.tensor([-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 2.0])
    expected = torch.tensor([0.0, 0.0, 1 - 0.84375, 0.5, 0.84375, 1.0, 1.0])
    torch.testing.assert_close(smooth_step(t, 1.0), expected)
    torch.testing.assert_close(smooth_step(2 * t, 2.0), expected)


def hand_selector(z: list[float], n: int, gamma: float = 1.0) -> list[float]:
    m = math.ceil(math.log2(n))
    s = [float(smooth_step(torch.tensor(v), gamma)) for v in z]
    out = []
    for j in range(n):
        bits = [(j >> (m - 1 - b)) & 1 for b in range(m)]
        out.append(math.prod(s[b] if bit else 1 - s[b] for b, bit in enumerate(bits)))
    return out


def test_dselect_k_selectors_match_the_binary_encoding():
    gate = DSelectKGate(6, 2, "static", None)
    z = torch.tensor([[0.1, -0.2, 0.3], [0.6, -0.7, 0.05]])
    got = gate.selectors(z)
    for i in range(2):
        torch.testing.assert_close(got[i], torch.tensor(hand_selector(z[i].tolist(), 6)))
    one_hot = gate.selectors(torch.tensor([[1.0, -1.0, 0.0]]))  # code 10x: experts 4 and 5 share
    torch.testing.assert_close(one_hot[0], torch.tensor(hand_selector([1.0, -1.0, 0.0], 6)))
    exact = gate.selectors(torch.tensor([[1.0, -1.0, 1.0]]))
    torch.testing.assert_close(exact[0], torch.tensor([0.0, 0, 0, 0, 0, 1]))


def test_dselect_k_selects_at_most_k_experts_once_converged():
    torch.manual_seed(0)
    model = DSelectK(nn.Linear(3, 4), 8, linear_heads(4), num_nonzeros=2, gate_input="static")
    gate = model.tasks["a"].gate
    with torch.no_grad():
        gate.z_logits.copy_(torch.tensor([[1.0, -1.0, 1.0], [-1.0, -1.0, 1.0]]))  # experts 5 and 1
        gate.w_logits.copy_(torch.tensor([0.0, math.log(3.0)]))  # weights 1/4, 3/4
    x = torch.randn(4, 3)
    experts = [e(x) for e in model.shared.experts.experts]
    expected = model.tasks["a"].head(0.25 * experts[5] + 0.75 * experts[1])
    torch.testing.assert_close(model(x)["a"], expected)
    weights, _ = gate(x, torch.stack(experts, 1))
    assert int((weights[0] > 0).sum()) == 2


def test_dselect_k_weights_sum_to_one_for_a_power_of_two():
    torch.manual_seed(0)
    for n, exact in ((4, True), (5, False)):
        gate = DSelectKGate(n, 3, "input", 3)
        with torch.no_grad():
            gate.z_linear.weight.normal_()
        weights, _ = gate(torch.randn(50, 3), torch.zeros(50, n, 1))
        if exact:
            torch.testing.assert_close(weights.sum(-1), torch.ones(50))
        else:
            assert bool((weights.sum(-1) <= 1 + 1e-6).all()) and bool((weights.sum(-1) < 1 - 1e-3).any())


def test_dselect_k_regularizer_by_hand():
    gate = DSelectKGate(3, 2, "static", None, entropy_reg=0.1)
    with torch.no_grad():
        gate.z_logits.copy_(torch.tensor([[0.1, -0.3], [0.2, 0.4]]))
    selectors = gate.selectors(gate.z_logits)
    rows = [hand_selector(z, 3) for z in ([0.1, -0.3], [0.2, 0.4])]
    entropy = -sum(p * math.log(p + 1e-6) for row in rows for p in row)
    unreachable = sum(1 / sum(row) - 1 for row in rows)
    assert gate.regularization(selectors).item() == pytest.approx(0.1 * entropy + unreachable, rel=1e-5)


def test_dselect_k_regularizer_reaches_the_gradients():
    def grads(regularized: bool):
        torch.manual_seed(0)
        model = DSelectK(nn.Linear(3, 4), 3, linear_heads(4), gate_input="input", gate_in_features=3, entropy_reg=1.0)
        out = model(torch.randn(8, 3))
        losses = [out[t].pow(2).mean() for t in TASKS]
        if regularized:
            losses = model.add_regularization(losses)
        mtlagg.backward(losses, model.shared_parameters(), Constant([1.0, 1.0, 1.0]), compute_gramian=True)
        return model

    plain, regularized = grads(False), grads(True)
    for p, q in zip(plain.shared_parameters(), regularized.shared_parameters()):
        torch.testing.assert_close(p.grad, q.grad)  # the regulariser depends on the gates only
    gate_plain = plain.tasks["a"].gate.z_linear.weight.grad
    gate_reg = regularized.tasks["a"].gate.z_linear.weight.grad
    assert not torch.allclose(gate_plain, gate_reg)
    regularized.eval()
    regularized(torch.randn(2, 3))
    assert regularized.regularization_losses() == {}


def test_dselect_k_errors():
    with pytest.raises(ValueError, match="num_experts must be an int >= 2"):
        DSelectK(nn.Linear(3, 4), 1, linear_heads(4), gate_input="static")
    with pytest.raises(ValueError, match=r"num_nonzeros \(k\) must be an int in \[1, num_experts=3\]"):
        DSelectK(nn.Linear(3, 4), 3, linear_heads(4), num_nonzeros=4, gate_input="static")


# -- HPS and the base class ---------------------------------------------------------------------
class TwoScales(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        low = torch.tanh(self.a(x))
        return low, torch.tanh(self.b(low))


class ReadsBoth(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 1)

    def forward(self, z):
        return self.linear(torch.cat(z, dim=1))


def test_hps_passes_a_tuple_of_features_and_cuts_each():
    torch.manual_seed(0)
    model = HPS(TwoScales(), {t: ReadsBoth() for t in TASKS})
    out = model(torch.randn(5, 3))
    assert len(model.representation) == 2
    losses = [o.pow(2).mean() for o in out.values()]
    mtlagg.backward(losses, model.shared_parameters(), UPGrad(), features=model.representation)
    assert all(p.grad is not None for p in model.parameters())


def test_base_class_errors():
    with pytest.raises(ValueError, match="must be a Python identifier"):
        HPS(nn.Linear(3, 3), {"a.b": nn.Linear(3, 1)})
    with pytest.raises(TypeError, match="heads must be a mapping"):
        HPS(nn.Linear(3, 3), [nn.Linear(3, 1)])
    with pytest.raises(ValueError, match="heads is empty"):
        HPS(nn.Linear(3, 3), {})
    with pytest.raises(TypeError, match=r"heads\['a'\] must be an nn.Module"):
        HPS(nn.Linear(3, 3), {"a": "linear"})
    model = build("hps")
    with pytest.raises(RuntimeError, match="no representation yet"):
        model.representation
    with pytest.raises(ValueError, match=r"unknown task 'd'; the tasks are \['a', 'b', 'c'\]"):
        model(batch(), task="d")
    with torch.no_grad():
        model(batch())
    with pytest.raises(RuntimeError, match="ran without gradients"):
        model.representation
    multi = build("hps", multi_input=True)
    with pytest.raises(TypeError, match="multi_input=True: pass a mapping"):
        multi(batch())
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['z'\]"):
        multi({"z": batch()})


def test_a_head_modifying_the_representation_in_place_is_caught():
    model = HPS(nn.Linear(3, 4), {t: nn.Sequential(nn.ReLU(inplace=True), nn.Linear(4, 1)) for t in ("a", "b")})
    model(torch.randn(2, 3))
    with pytest.raises(RuntimeError, match="modified in place"):
        model.representation


def test_add_regularization_shapes():
    model = build("dselect_k")
    out = model(batch())
    reg = model.regularization_losses()
    assert sorted(reg) == sorted(TASKS)
    losses = {t: out[t].mean() for t in TASKS}
    added = model.add_regularization(losses)
    torch.testing.assert_close(added["b"], losses["b"] + reg["b"])
    with pytest.raises(ValueError, match="losses has 2 entries but the last forward pass computed 3 tasks"):
        model.add_regularization([losses["a"], losses["b"]])
    plain = build("hps")
    plain(batch())
    assert plain.add_regularization([torch.tensor(1.0)]) == [torch.tensor(1.0)]


def test_input_gradient_free_gates_make_no_extra_cut():
    model = build("ple", gate_input="experts")
    model(batch())
    assert len(model.representation) == 2  # the level L-2 experts (one alias) and the last shared experts
    model = build("ple", gate_input="input", gate_in_features=[5, 6, 6])
    model(batch())
    assert len(model.representation) == 3  # plus the level L-2 task gates' inputs
