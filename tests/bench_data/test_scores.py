"""Δm% and MR: published values recomputed from the papers' per-metric rows; hand examples; errors."""

from __future__ import annotations

import pytest

from benchmarks.datasets import lookup
from benchmarks.scores import (
    delta_m,
    delta_m_per_task,
    delta_m_terms,
    load_baseline,
    load_table,
    mean_rank,
    published_datasets,
    user_baseline,
)


@pytest.mark.parametrize(
    ("dataset", "method", "expected", "tol"),
    [
        ("nyuv2", "fairgrad", -4.66, 0.006),
        ("nyuv2", "famo", -4.10, 0.006),
        ("nyuv2", "nash_mtl", -4.04, 0.01),
        # papers average per-seed Δm, so the Δm of the mean row is a little off (reference mtllib.md §2)
        ("cityscapes", "nash_mtl", 6.72, 0.005),
        ("cityscapes", "fairgrad", 5.12, 0.005),
        ("cityscapes", "famo", 8.13, 0.01),
        ("cityscapes", "ls", 22.60, 0.03),
        ("qm9", "nash_mtl", 61.8, 0.05),
    ],
)
def test_delta_m_reproduces_published_rows(dataset, method, expected, tol):
    table = load_table(dataset)
    base = load_baseline(dataset, table.baseline)
    row = table.methods[method]["values"]
    assert base.delta_m(row) == pytest.approx(expected, abs=tol)
    assert abs(base.delta_m(row) - table.methods[method]["delta_m"]) < 0.25


def test_delta_m_hand_example_and_signs():
    base = {"a/acc": 0.5, "b/err": 2.0}
    hib = {"a/acc": True, "b/err": False}
    # acc 0.6 (+20% better -> -20), err 3 (+50% worse -> +50)
    assert delta_m_terms({"a/acc": 0.6, "b/err": 3.0}, base, hib) == pytest.approx({"a/acc": -20.0, "b/err": 50.0})
    assert delta_m({"a/acc": 0.6, "b/err": 3.0}, base, hib) == pytest.approx(15.0)
    assert delta_m(base, base, hib) == 0.0


def test_per_task_variant_weighs_tasks_equally():
    base = {"seg/a": 1.0, "seg/b": 1.0, "depth/c": 1.0}
    hib = dict.fromkeys(base, False)
    res = {"seg/a": 1.1, "seg/b": 1.3, "depth/c": 0.5}
    overall, per_task = delta_m_per_task(res, base, hib)
    assert per_task == pytest.approx({"seg": 20.0, "depth": -50.0})
    assert overall == pytest.approx(-15.0)
    assert delta_m(res, base, hib) == pytest.approx((10 + 30 - 50) / 3)


def test_delta_m_errors():
    with pytest.raises(KeyError, match="missing from results"):
        delta_m({}, {"x": 1.0}, {"x": True})
    with pytest.raises(ValueError, match="divides"):
        delta_m({"x": 1.0}, {"x": 0.0}, {"x": True})
    with pytest.raises(ValueError, match="at least one"):
        delta_m({}, {}, {})


def test_mean_rank_hand_example_with_ties():
    table = {
        "A": {"acc": 0.9, "err": 1.0},
        "B": {"acc": 0.8, "err": 1.0},
        "C": {"acc": 0.9, "err": 3.0},
    }
    mr = mean_rank(table, {"acc": True, "err": False})
    # acc: A, C tie for 1-2 (1.5), B 3; err: A, B tie (1.5), C 3
    assert mr == pytest.approx({"A": 1.5, "B": 2.25, "C": 2.25})
    with pytest.raises(KeyError, match="missing"):
        mean_rank({"A": {"acc": 1.0}, "B": {}}, {"acc": True})


@pytest.mark.parametrize("dataset", published_datasets())
def test_baselines_match_the_dataset_specs(dataset):
    spec = lookup(dataset)
    assert spec.baseline == dataset
    table = load_table(dataset)
    for name in {"stl", table.baseline}:
        base = load_baseline(dataset, name)
        assert list(base.values) == list(spec.metric_keys)
        assert base.higher_is_better == spec.higher_is_better
        assert base.source
    for method, row in table.methods.items():
        assert isinstance(row["delta_m"], float), method
        if "values" in row:
            assert set(row["values"]) == set(spec.metric_keys)


def test_published_baseline_values_in_metric_units():
    nyu = load_baseline("nyuv2")
    assert nyu.values["segmentation/miou"] == pytest.approx(0.3830)
    assert nyu.values["normal/angle_mean"] == pytest.approx(25.01)
    assert load_baseline("qm9").values["homo/mae"] == pytest.approx(60.576)
    assert load_baseline("qm9", "stl_ntkmtl").values["U0/mae"] == pytest.approx(39.3)
    celeba = load_baseline("celeba")
    assert sum(celeba.values.values()) / 40 == pytest.approx(0.6971, abs=5e-5)
    with pytest.raises(KeyError, match="no baseline"):
        load_baseline("qm9", "nope")
    with pytest.raises(KeyError, match="no published baselines"):
        load_baseline("multimnist")


def test_user_baseline_requires_every_metric():
    spec = lookup("multimnist")
    with pytest.raises(KeyError, match="lack"):
        user_baseline("multimnist", {"left/accuracy": 0.9}, spec.higher_is_better)
    b = user_baseline("multimnist", {"left/accuracy": 0.9, "right/accuracy": 0.8}, spec.higher_is_better)
    assert b.delta_m({"left/accuracy": 0.99, "right/accuracy": 0.8}) == pytest.approx(-5.0)
