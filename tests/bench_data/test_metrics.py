"""Metrics against scikit-learn, scipy and hand computations; accumulation over batches; errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from benchmarks.metrics import (
    Accuracy,
    BinaryF1,
    Correlation,
    DepthErrors,
    MeanAbsoluteError,
    NormalAngles,
    SegmentationMetrics,
    compute_all,
)


def _batches(n: int, size: int):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def test_accuracy_matches_sklearn_over_uneven_batches():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(103, 7, generator=g)
    target = torch.randint(0, 7, (103,), generator=g)
    m = Accuracy()
    for s in _batches(103, 10):
        m.update(logits[s], target[s])
    expected = accuracy_score(target.numpy(), logits.argmax(1).numpy())
    assert m.compute()["accuracy"] == pytest.approx(expected, abs=1e-12)


def test_accuracy_accepts_labels_and_ignores_minus_one():
    m = Accuracy()
    m.update(torch.tensor([1, 2, 3, 0]), torch.tensor([1, -1, 0, 0]))
    assert m.compute()["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", range(5))
def test_binary_f1_accumulated_matches_sklearn_not_batch_average(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(200, generator=g) - 0.7
    target = (torch.rand(200, generator=g) < 0.3).float()
    m = BinaryF1()
    per_batch = []
    for s in _batches(200, 16):
        m.update(logits[s], target[s])
        per_batch.append(f1_score(target[s].numpy(), (logits[s] >= 0).numpy(), zero_division=0))
    expected = f1_score(target.numpy(), (logits >= 0).numpy())
    assert m.compute()["f1"] == pytest.approx(expected, abs=1e-12)
    assert abs(np.mean(per_batch) - expected) > 1e-6  # the batch average would differ


def test_binary_f1_probabilities_threshold_and_zero_division():
    m = BinaryF1(from_logits=False)
    m.update(torch.tensor([0.49, 0.5, 0.9, 0.1]), torch.tensor([1.0, 1.0, 0.0, 0.0]))
    # predicted positive: 0.5 and 0.9 -> TP 1, FP 1, FN 1 -> 2/(2+1+1)
    assert m.compute()["f1"] == pytest.approx(0.5)
    m = BinaryF1()
    m.update(torch.full((5,), -3.0), torch.zeros(5))
    assert m.compute()["f1"] == 0.0


def test_mae_in_original_units():
    std, mean = 2.5, -7.0
    pred = torch.tensor([0.1, -0.4, 1.2])
    y = torch.tensor([0.3, 0.0, 1.0])
    m = MeanAbsoluteError(scale=std * 1000)  # meV from standardised eV
    m.update(pred[:2], y[:2])
    m.update(pred[2:], y[2:])
    raw = np.abs((pred.numpy() * std + mean) - (y.numpy() * std + mean)).mean() * 1000
    assert m.compute()["mae"] == pytest.approx(raw, rel=1e-6)
    with pytest.raises(ValueError, match="scale must be positive"):
        MeanAbsoluteError(scale=0.0)


def test_segmentation_matches_sklearn_confusion_with_ignore_index():
    g = torch.Generator().manual_seed(3)
    c = 5
    logits = torch.randn(4, c, 6, 7, generator=g)
    target = torch.randint(-1, c, (4, 6, 7), generator=g)
    target[target == 4] = 3  # class 4 never in the truth; it may still be predicted
    m = SegmentationMetrics(c)
    m.update(logits[:3], target[:3])
    m.update(logits[3:], target[3:])
    pred = logits.argmax(1).numpy().ravel()
    t = target.numpy().ravel()
    keep = t != -1
    cm = confusion_matrix(t[keep], pred[keep], labels=list(range(c)))
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = tp[union > 0] / union[union > 0]
    out = m.compute()
    assert out["miou"] == pytest.approx(iou.mean(), abs=1e-12)
    assert out["pixel_acc"] == pytest.approx(tp.sum() / cm.sum(), abs=1e-12)


def test_segmentation_hand_example_and_bad_class():
    m = SegmentationMetrics(3)
    pred = torch.tensor([[0, 0, 1, 2]])
    target = torch.tensor([[0, 1, 1, -1]])
    m.update(pred, target)
    # class 0: TP 1, FP 1, FN 0 -> 1/2; class 1: TP 1, FP 0, FN 1 -> 1/2; class 2 absent everywhere (pred 2 ignored)
    assert m.compute() == {"miou": pytest.approx(0.5), "pixel_acc": pytest.approx(2 / 3)}
    with pytest.raises(ValueError, match="outside"):
        m.update(torch.tensor([[0]]), torch.tensor([[3]]))


def test_depth_errors_pixel_and_batch_reductions():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 9.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    target = torch.tensor([[[[2.0, 2.0], [0.0, 0.0]]], [[[4.0, 0.0], [0.0, 0.0]]]])
    # valid pixels: batch 0: (1 vs 2), (2 vs 2); batch 1: (1 vs 4)
    pix = DepthErrors()
    bat = DepthErrors(reduction="batch")
    for m in (pix, bat):
        m.update(pred[:1], target[:1])
        m.update(pred[1:], target[1:])
    assert pix.compute()["abs_err"] == pytest.approx((1 + 0 + 3) / 3)
    assert pix.compute()["rel_err"] == pytest.approx((0.5 + 0 + 0.75) / 3)
    assert bat.compute()["abs_err"] == pytest.approx((0.5 + 3) / 2)
    assert bat.compute()["rel_err"] == pytest.approx((0.25 + 0.75) / 2)


def _angles_np(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    mask = np.any(target != 0, axis=1)
    p = pred / np.linalg.norm(pred, axis=1, keepdims=True)
    dot = np.clip((p * target).sum(1), -1, 1)
    return np.degrees(np.arccos(dot[mask]))


def test_normal_angles_against_numpy():
    g = torch.Generator().manual_seed(5)
    target = torch.nn.functional.normalize(torch.randn(3, 3, 8, 9, generator=g), dim=1)
    target[:, :, :2] = 0  # invalid rows
    pred = target + 0.6 * torch.randn(3, 3, 8, 9, generator=g)
    m = NormalAngles()
    m.update(pred[:2], target[:2])
    m.update(pred[2:], target[2:])
    ang = _angles_np(pred.double().numpy(), target.double().numpy())
    out = m.compute()
    assert out["angle_mean"] == pytest.approx(ang.mean(), abs=1e-9)
    assert out["angle_median"] == pytest.approx(np.median(ang), abs=5e-4 + 1e-9)
    for t, key in zip((11.25, 22.5, 30.0), ("within_11.25", "within_22.5", "within_30")):
        assert out[key] == pytest.approx((ang < t).mean(), abs=1e-12)
    b = NormalAngles(reduction="batch")
    b.update(pred[:2], target[:2])
    b.update(pred[2:], target[2:])
    a1 = _angles_np(pred[:2].double().numpy(), target[:2].double().numpy())
    a2 = _angles_np(pred[2:].double().numpy(), target[2:].double().numpy())
    assert b.compute()["angle_mean"] == pytest.approx((a1.mean() + a2.mean()) / 2, abs=1e-9)
    assert b.compute()["angle_mean"] != pytest.approx(out["angle_mean"], abs=1e-6)


def test_normal_angles_perfect_and_opposite():
    t = torch.zeros(1, 3, 2, 2)
    t[:, 2] = 1.0
    m = NormalAngles()
    m.update(t * 3.0, t)
    assert m.compute()["angle_mean"] == pytest.approx(0.0, abs=1e-6)
    assert m.compute()["within_11.25"] == 1.0
    m.reset()
    m.update(-t, t)
    assert m.compute()["angle_mean"] == pytest.approx(180.0)
    assert m.compute()["angle_median"] == pytest.approx(180.0, abs=2e-3)


def test_correlation_matches_scipy_with_ties():
    g = torch.Generator().manual_seed(7)
    y = torch.randint(1, 6, (60,), generator=g).float()  # many ties
    p = y + 0.8 * torch.randn(60, generator=g)
    p[::7] = 2.0  # ties in the prediction too
    m = Correlation()
    for s in _batches(60, 11):
        m.update(p[s], y[s])
    out = m.compute()
    # (float64 copies: recent scipy computes in the dtype of its inputs)
    p64, y64 = p.double().numpy(), y.double().numpy()
    assert out["pearson"] == pytest.approx(stats.pearsonr(p64, y64)[0], abs=1e-10)
    assert out["spearman"] == pytest.approx(stats.spearmanr(p64, y64)[0], abs=1e-10)


def test_errors_on_empty_nan_and_constant():
    with pytest.raises(ValueError, match="before any valid element"):
        Accuracy().compute()
    with pytest.raises(ValueError, match="NaN or Inf"):
        MeanAbsoluteError().update(torch.tensor([math.nan]), torch.tensor([0.0]))
    c = Correlation()
    c.update(torch.ones(4), torch.arange(4.0))
    with pytest.raises(ValueError, match="constant"):
        c.compute()
    d = DepthErrors()
    d.update(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))  # no valid pixel: nothing counted
    with pytest.raises(ValueError, match="before any valid element"):
        d.compute()


def test_compute_all_flattens_keys():
    a = Accuracy()
    a.update(torch.tensor([1]), torch.tensor([1]))
    f = BinaryF1()
    f.update(torch.tensor([1.0]), torch.tensor([1.0]))
    assert compute_all({"left": a, "Smiling": f}) == {"left/accuracy": 1.0, "Smiling/f1": 1.0}


@pytest.mark.parametrize("n_valid", [1, 2, 3, 10, 57, 200, 1001])
def test_normal_median_within_half_a_bin_for_odd_and_even_counts(n_valid):
    g = torch.Generator().manual_seed(n_valid)
    target = torch.nn.functional.normalize(torch.randn(1, 3, 1, n_valid, generator=g), dim=1)
    pred = target + torch.randn(1, 3, 1, n_valid, generator=g)
    for bin_width in (1e-3, 0.5):
        m = NormalAngles(bin_width=bin_width)
        m.update(pred, target)
        ang = _angles_np(pred.double().numpy(), target.double().numpy())
        assert m.compute()["angle_median"] == pytest.approx(np.median(ang), abs=bin_width / 2 + 1e-9)
