"""Dataset registry and specs: lookup with suggestions, spec consistency, losses."""

from __future__ import annotations

import pytest
import torch

from benchmarks.datasets import REGISTRY, UnknownDatasetError, lookup, names
from benchmarks.datasets._spec import MetricSpec, TaskSpec
from benchmarks.datasets.losses import LOSSES, bce, cross_entropy, depth_l1, get_loss, mse, normal_cosine

EXPECTED = {
    "multimnist",
    "multifashion",
    "multifashion_mnist",
    "qm9",
    "sick",
    "nyuv2",
    "cityscapes",
    "office31",
    "officehome",
    "celeba",
    "pawsx",
}


def test_every_dataset_of_the_issue_is_registered():
    assert set(names()) == EXPECTED


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("NYUv2", "nyuv2"),
        ("nyu", "nyuv2"),
        ("Multi-MNIST", "multimnist"),
        ("office-home", "officehome"),
        ("PAWS-X", "pawsx"),
    ],
)
def test_lookup_normalises_and_accepts_aliases(query, name):
    assert lookup(query).name == name


@pytest.mark.parametrize(
    ("query", "suggestion"),
    [("nyuv3", "nyuv2"), ("multimnst", "multimnist"), ("cityscape", "cityscapes"), ("celeb", "celeba")],
)
def test_unknown_name_suggests_close_names(query, suggestion):
    with pytest.raises(UnknownDatasetError, match=f"unknown dataset '{query}'.*Did you mean.*'{suggestion}'"):
        lookup(query)


def test_unknown_name_without_close_match_lists_known():
    with pytest.raises(UnknownDatasetError, match="Known datasets: celeba, cityscapes") as err:
        lookup("imagenet-xyz")
    assert "Did you mean" not in str(err.value)
    with pytest.raises(TypeError, match="must be a string"):
        lookup(3)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_specs_are_complete_and_consistent(name):
    spec = REGISTRY[name]
    assert spec.tasks and spec.validation and spec.data_source and spec.expected_files
    assert len(set(spec.metric_keys)) == len(spec.metric_keys)
    for t in spec.tasks:
        assert t.loss in LOSSES and t.out_dim >= 1 and t.metrics
    for preset in ("paper", "quick"):
        p = spec.protocol(preset)
        assert p.optimizer in ("adam", "adamw", "sgd") and p.lr > 0 and p.batch_size > 0 and p.epochs > 0
        assert p.model and p.source
    assert spec.presets["quick"].subset, "the quick preset must run on a subset"
    with pytest.raises(ValueError, match="unknown preset"):
        spec.protocol("fast")


def test_spec_metric_metadata_matches_metric_objects():
    from benchmarks import metrics as M

    kinds = {"accuracy": M.Accuracy, "f1": M.BinaryF1, "mae": M.MeanAbsoluteError, "miou": M.SegmentationMetrics}
    for spec in REGISTRY.values():
        for m in spec.metrics:
            for cls in (M.Accuracy, M.BinaryF1, M.MeanAbsoluteError, M.SegmentationMetrics, M.DepthErrors,
                        M.NormalAngles, M.Correlation):  # fmt: skip
                if m.name in cls.names:
                    assert cls.higher_is_better[m.name] == m.higher_is_better, m.key
    assert kinds  # the table above names each metric family once


def test_task_spec_validation():
    with pytest.raises(ValueError, match="kind must be one of"):
        TaskSpec("a", "ranking", "mse", 1, ())
    with pytest.raises(ValueError, match="listed under task"):
        TaskSpec("a", "regression", "mse", 1, (MetricSpec("b", "mae", False),))


def test_losses_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    target = torch.tensor([0, -1])
    assert cross_entropy(logits, target).item() == pytest.approx(torch.log1p(torch.exp(torch.tensor(-2.0))).item())
    assert cross_entropy(logits, torch.tensor([-1, -1])).item() == 0.0
    assert bce(torch.zeros(3, 1), torch.tensor([0.0, 1.0, 1.0])).item() == pytest.approx(0.6931, abs=1e-4)
    assert mse(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])).item() == pytest.approx(5.0)
    pred = torch.tensor([[[[1.0, 5.0], [2.0, 2.0]]]])
    depth = torch.tensor([[[[2.0, 0.0], [2.0, 4.0]]]])
    assert depth_l1(pred, depth).item() == pytest.approx((1 + 0 + 2) / 3)
    n = torch.zeros(1, 3, 1, 2)
    n[0, 2] = 1.0
    n[0, :, 0, 1] = 0.0  # second pixel invalid
    p = torch.zeros(1, 3, 1, 2, requires_grad=True)
    with torch.no_grad():
        p[0, 0, 0, 0] = 2.0  # orthogonal to the target: cosine 0
    loss = normal_cosine(p, n)
    assert loss.item() == pytest.approx(1.0)
    empty = depth_l1(pred.requires_grad_(), torch.zeros_like(depth))
    assert empty.item() == 0.0 and empty.requires_grad  # no NaN on an empty mask
    with pytest.raises(Exception, match="unknown loss"):
        get_loss("hinge")
