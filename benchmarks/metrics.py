"""Accumulating metrics of the benchmark protocols: ``update`` per batch, ``compute`` over the split.

Each metric object serves one task and may return several named values (e.g. segmentation returns
``miou`` and ``pixel_acc``); ``names`` and ``higher_is_better`` describe them.

Accumulation. Every metric here is accumulated over the whole split by default (``reduction="pixel"``
for the dense metrics, i.e. per valid pixel / per example). The MTAN-derived code bases (nash-mtl,
FAMO, FairGrad, MTLlib, LibMTL) average the depth and normal metrics *per batch* (a mean of
per-batch means and medians), which weights small and large valid masks alike and makes the numbers
depend on the batch size (reference mtllib.md §3). Pass ``reduction="batch"`` to
:class:`DepthErrors` / :class:`NormalAngles` to reproduce that. Segmentation (confusion matrix),
QM9 MAE and CelebA F1 are accumulated over the split by the peers too, so they agree.

Units: fractions in [0, 1] for mIoU, pixel accuracy, accuracy, F1 and the within-angle shares;
degrees for angles; the units of the data for depth and MAE (times ``scale``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F


class Metric(ABC):
    """An accumulator of one task's metrics over a split."""

    names: ClassVar[tuple[str, ...]] = ()
    higher_is_better: ClassVar[Mapping[str, bool]] = {}

    def __init__(self) -> None:
        self.reset()

    @abstractmethod
    def reset(self) -> None: ...

    @abstractmethod
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None: ...

    @abstractmethod
    def compute(self) -> dict[str, float]: ...

    def _check_nonempty(self, count: float) -> None:
        if count == 0:
            raise ValueError(f"{type(self).__name__}.compute() called before any valid element was seen")


def _check_finite(pred: torch.Tensor, who: str) -> None:
    if not torch.isfinite(pred).all():
        raise ValueError(f"{who}: predictions hold NaN or Inf")


class Accuracy(Metric):
    """Share of correct class predictions. ``pred``: logits ``(B, C)`` or class indices ``(B,)``."""

    names: ClassVar[tuple[str, ...]] = ("accuracy",)
    higher_is_better: ClassVar[Mapping[str, bool]] = {"accuracy": True}

    def __init__(self, ignore_index: int = -1) -> None:
        self.ignore_index = ignore_index
        super().__init__()

    def reset(self) -> None:
        self.correct = 0
        self.total = 0

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        labels = pred.argmax(dim=1) if pred.dim() == target.dim() + 1 else pred
        if labels.shape != target.shape:
            raise ValueError(
                f"Accuracy: prediction shape {tuple(pred.shape)} does not fit target {tuple(target.shape)}"
            )
        valid = target != self.ignore_index
        self.correct += int(((labels == target) & valid).sum())
        self.total += int(valid.sum())

    def compute(self) -> dict[str, float]:
        self._check_nonempty(self.total)
        return {"accuracy": self.correct / self.total}


class BinaryF1(Metric):
    """F1 of a binary task with TP / FP / FN accumulated over the split (not averaged over batches).

    ``pred`` holds logits (positive when ``logit >= 0``, i.e. probability >= 0.5, the CelebA protocol)
    or probabilities with ``from_logits=False``. F1 = 2TP / (2TP + FP + FN), and 0 when that is 0/0
    (no positive predicted nor present), as scikit-learn's ``zero_division=0``.
    """

    names: ClassVar[tuple[str, ...]] = ("f1",)
    higher_is_better: ClassVar[Mapping[str, bool]] = {"f1": True}

    def __init__(self, from_logits: bool = True, threshold: float = 0.5) -> None:
        self.from_logits = from_logits
        self.threshold = threshold
        super().__init__()

    def reset(self) -> None:
        self.tp = 0
        self.fp = 0
        self.fn = 0
        self.n = 0

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred = pred.reshape(target.shape)
        _check_finite(pred, "BinaryF1")
        if self.from_logits:
            positive = pred >= math.log(self.threshold / (1.0 - self.threshold))
        else:
            positive = pred >= self.threshold
        truth = target > 0.5
        self.tp += int((positive & truth).sum())
        self.fp += int((positive & ~truth).sum())
        self.fn += int((~positive & truth).sum())
        self.n += target.numel()

    def compute(self) -> dict[str, float]:
        self._check_nonempty(self.n)
        denom = 2 * self.tp + self.fp + self.fn
        return {"f1": 2 * self.tp / denom if denom else 0.0}


class MeanAbsoluteError(Metric):
    """Mean absolute error over all examples of the split, times ``scale``.

    For standardised targets pass ``scale = std`` (times 1000 for the QM9 targets reported in meV), so
    the value is in the original units: ``|pred*std + mean - (y*std + mean)| = |pred - y| * std``.
    """

    names: ClassVar[tuple[str, ...]] = ("mae",)
    higher_is_better: ClassVar[Mapping[str, bool]] = {"mae": False}

    def __init__(self, scale: float = 1.0) -> None:
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"MeanAbsoluteError: scale must be positive and finite, got {scale}")
        self.scale = float(scale)
        super().__init__()

    def reset(self) -> None:
        self.abs_sum = 0.0
        self.count = 0

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred = pred.reshape(target.shape)
        _check_finite(pred, "MeanAbsoluteError")
        self.abs_sum += float((pred.double() - target.double()).abs().sum())
        self.count += target.numel()

    def compute(self) -> dict[str, float]:
        self._check_nonempty(self.count)
        return {"mae": self.abs_sum / self.count * self.scale}


class SegmentationMetrics(Metric):
    """mIoU and pixel accuracy from a confusion matrix accumulated over the split.

    ``pred``: logits ``(B, C, H, W)`` or labels ``(B, H, W)``; ``target`` ``(B, H, W)`` with ``ignore_index``
    pixels left out. IoU_c = TP_c / (TP_c + FP_c + FN_c); mIoU averages it over the classes whose union is
    non-empty (a class absent from both prediction and truth of the whole split is skipped, not counted 0).
    Pixel accuracy = trace / sum of the confusion matrix.
    """

    names: ClassVar[tuple[str, ...]] = ("miou", "pixel_acc")
    higher_is_better: ClassVar[Mapping[str, bool]] = {"miou": True, "pixel_acc": True}

    def __init__(self, num_classes: int, ignore_index: int = -1) -> None:
        if num_classes < 1:
            raise ValueError(f"SegmentationMetrics: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        super().__init__()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        labels = pred.argmax(dim=1) if pred.dim() == target.dim() + 1 else pred
        if labels.shape != target.shape:
            raise ValueError(
                f"SegmentationMetrics: prediction shape {tuple(pred.shape)} does not fit target {tuple(target.shape)}"
            )
        t = target.reshape(-1).long()
        p = labels.reshape(-1).long()
        valid = t != self.ignore_index
        t, p = t[valid], p[valid]
        if t.numel() and (t.min() < 0 or t.max() >= self.num_classes):
            raise ValueError(f"SegmentationMetrics: target class outside [0, {self.num_classes}) and not ignored")
        idx = t * self.num_classes + p
        self.confusion += torch.bincount(idx, minlength=self.num_classes**2).reshape(self.num_classes, -1).cpu()

    def compute(self) -> dict[str, float]:
        h = self.confusion.double()
        total = h.sum()
        self._check_nonempty(float(total))
        tp = h.diag()
        union = h.sum(0) + h.sum(1) - tp
        present = union > 0
        iou = tp[present] / union[present]
        return {"miou": float(iou.mean()), "pixel_acc": float(tp.sum() / total)}


class DepthErrors(Metric):
    """Absolute and relative depth error over the pixels whose target depth is non-zero.

    abs_err = mean |p - t|, rel_err = mean |p - t| / t over valid pixels. ``reduction="pixel"`` (default)
    averages over all valid pixels of the split; ``"batch"`` averages the per-batch means (the peers).
    """

    names: ClassVar[tuple[str, ...]] = ("abs_err", "rel_err")
    higher_is_better: ClassVar[Mapping[str, bool]] = {"abs_err": False, "rel_err": False}

    def __init__(self, reduction: str = "pixel") -> None:
        if reduction not in ("pixel", "batch"):
            raise ValueError(f"DepthErrors: reduction must be 'pixel' or 'batch', got {reduction!r}")
        self.reduction = reduction
        super().__init__()

    def reset(self) -> None:
        self.abs_sum = 0.0
        self.rel_sum = 0.0
        self.count = 0
        self.batch_values: list[tuple[float, float]] = []

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.shape != target.shape:
            raise ValueError(f"DepthErrors: prediction shape {tuple(pred.shape)} != target {tuple(target.shape)}")
        _check_finite(pred, "DepthErrors")
        mask = target != 0
        n = int(mask.sum())
        if n == 0:
            return
        err = (pred - target).abs()[mask].double()
        a = float(err.sum())
        r = float((err / target[mask].abs().double()).sum())
        self.abs_sum += a
        self.rel_sum += r
        self.count += n
        self.batch_values.append((a / n, r / n))

    def compute(self) -> dict[str, float]:
        self._check_nonempty(self.count)
        if self.reduction == "batch":
            k = len(self.batch_values)
            return {
                "abs_err": sum(v[0] for v in self.batch_values) / k,
                "rel_err": sum(v[1] for v in self.batch_values) / k,
            }
        return {"abs_err": self.abs_sum / self.count, "rel_err": self.rel_sum / self.count}


class NormalAngles(Metric):
    """Angle between predicted and true surface normals, in degrees, over pixels with a non-zero normal.

    ``pred`` ``(B, 3, H, W)`` is L2-normalised per pixel first; angle = acos(clamp(<p, t>, -1, 1)).
    Returns the mean and median angle and the shares of pixels within 11.25, 22.5 and 30 degrees.
    With ``reduction="pixel"`` the median is over all valid pixels of the split, read from a histogram
    with ``bin_width`` degrees (1e-3 by default): exact to ``bin_width / 2`` (the middle order statistics
    are taken at their bin centres; the mean of the two for an even count). ``"batch"`` averages
    per-batch means, medians and shares (the peers).
    """

    THRESHOLDS = (11.25, 22.5, 30.0)
    names: ClassVar[tuple[str, ...]] = ("angle_mean", "angle_median", "within_11.25", "within_22.5", "within_30")
    higher_is_better: ClassVar[Mapping[str, bool]] = {
        "angle_mean": False,
        "angle_median": False,
        "within_11.25": True,
        "within_22.5": True,
        "within_30": True,
    }

    def __init__(self, reduction: str = "pixel", bin_width: float = 1e-3) -> None:
        if reduction not in ("pixel", "batch"):
            raise ValueError(f"NormalAngles: reduction must be 'pixel' or 'batch', got {reduction!r}")
        self.reduction = reduction
        self.bin_width = bin_width
        self.num_bins = math.ceil(180.0 / bin_width)
        super().__init__()

    def reset(self) -> None:
        self.hist = torch.zeros(self.num_bins, dtype=torch.int64)
        self.angle_sum = 0.0
        self.within = [0, 0, 0]
        self.count = 0
        self.batch_values: list[list[float]] = []

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(
                f"NormalAngles: expected (B, 3, H, W) tensors, got {tuple(pred.shape)}, {tuple(target.shape)}"
            )
        _check_finite(pred, "NormalAngles")
        mask = (target != 0).any(dim=1)
        n = int(mask.sum())
        if n == 0:
            return
        unit = F.normalize(pred.double(), p=2, dim=1)
        dot = (unit * target.double()).sum(dim=1)[mask].clamp(-1.0, 1.0)
        angle = torch.rad2deg(torch.acos(dot))
        within = [int((angle < t).sum()) for t in self.THRESHOLDS]
        bins = (angle / self.bin_width).long().clamp_(0, self.num_bins - 1)
        self.hist += torch.bincount(bins.cpu(), minlength=self.num_bins)
        self.angle_sum += float(angle.sum())
        self.within = [a + b for a, b in zip(self.within, within)]
        self.count += n
        self.batch_values.append([float(angle.mean()), float(angle.median()), *[w / n for w in within]])

    def _order_statistic(self, cum: torch.Tensor, k: int) -> float:
        """Centre of the bin holding the k-th smallest angle (1-based): within ``bin_width / 2`` of it."""
        b = int(torch.searchsorted(cum, torch.tensor(k, dtype=cum.dtype), right=False))
        return (b + 0.5) * self.bin_width

    def _hist_median(self) -> float:
        cum = torch.cumsum(self.hist, 0)
        n = self.count
        if n % 2:
            return self._order_statistic(cum, (n + 1) // 2)
        return 0.5 * (self._order_statistic(cum, n // 2) + self._order_statistic(cum, n // 2 + 1))

    def compute(self) -> dict[str, float]:
        self._check_nonempty(self.count)
        if self.reduction == "batch":
            k = len(self.batch_values)
            avg = [sum(v[i] for v in self.batch_values) / k for i in range(5)]
            return dict(zip(self.names, avg))
        values = [self.angle_sum / self.count, self._hist_median(), *[w / self.count for w in self.within]]
        return dict(zip(self.names, values))


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata)."""
    order = torch.argsort(x, stable=True)
    xs = x[order]
    n = x.numel()
    ranks_sorted = torch.arange(1, n + 1, dtype=torch.float64)
    # group equal values: start index of each run
    new_run = torch.ones(n, dtype=torch.bool)
    new_run[1:] = xs[1:] != xs[:-1]
    run_id = torch.cumsum(new_run.long(), 0) - 1
    run_sum = torch.zeros(int(run_id[-1]) + 1, dtype=torch.float64).index_add_(0, run_id, ranks_sorted)
    run_len = torch.bincount(run_id).double()
    out = torch.empty(n, dtype=torch.float64)
    out[order] = (run_sum / run_len)[run_id]
    return out


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    if denom == 0.0:
        raise ValueError("correlation undefined: predictions or targets are constant over the split")
    return float((a * b).sum()) / denom


class Correlation(Metric):
    """Pearson and Spearman correlation between predictions and targets over the split (SICK relatedness).

    Spearman = Pearson correlation of the average ranks (ties share their mean rank).
    """

    names: ClassVar[tuple[str, ...]] = ("pearson", "spearman")
    higher_is_better: ClassVar[Mapping[str, bool]] = {"pearson": True, "spearman": True}

    def reset(self) -> None:
        self.preds: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred = pred.reshape(target.shape)
        _check_finite(pred, "Correlation")
        self.preds.append(pred.detach().double().reshape(-1).cpu())
        self.targets.append(target.detach().double().reshape(-1).cpu())

    def compute(self) -> dict[str, float]:
        n = sum(p.numel() for p in self.preds)
        if n < 2:
            raise ValueError("Correlation.compute() needs at least 2 examples")
        p = torch.cat(self.preds)
        t = torch.cat(self.targets)
        return {
            "pearson": _pearson(p, t),
            "spearman": _pearson(_average_ranks(p), _average_ranks(t)),
        }


def compute_all(metrics: Mapping[str, Metric]) -> dict[str, float]:
    """Flatten ``{task: metric}`` into ``{"task/name": value}`` (the keys of scores and baselines)."""
    out: dict[str, float] = {}
    for task, m in metrics.items():
        for name, value in m.compute().items():
            out[f"{task}/{name}"] = value
    return out


def reset_all(metrics: Mapping[str, Metric] | Sequence[Metric]) -> None:
    for m in metrics.values() if isinstance(metrics, Mapping) else metrics:
        m.reset()
