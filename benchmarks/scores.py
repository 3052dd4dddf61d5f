"""Δm% against single-task baselines, mean rank (MR), and the published baselines and tables.

Δm% (Maninis et al. 2019; the form used by Nash-MTL, FAMO, FairGrad and LibMTL):

    Δm% = (100 / S) Σ_s (-1)^{δ_s} (M_s - B_s) / B_s,

over all S metrics (not tasks), with δ_s = 1 when higher is better, M the multi-task model's metric and
B the single-task baseline. Lower is better; negative means better than single-task learning on average.
:func:`delta_m_per_task` averages the per-metric terms within each task first (PIVRG's variant), so a task
with many metrics (NYUv2 normals: 5) weighs as much as one with few.

MR (mean rank) = (1 / S) Σ_s rank of the method on metric s among the methods compared (1 = best,
ties share their average rank). It depends on which methods are in the table.

The published numbers live in ``benchmarks/baselines/<dataset>.json`` in the units of
:mod:`benchmarks.metrics` (fractions for mIoU, accuracies and F1; meV for the QM9 energies), each with
its source. They were transcribed from the project's reference notes on MTLlib / nash-mtl / FAMO /
FairGrad (``shared/reference/mtllib.md`` §2 and §4), which cite the papers and code files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any


def _check_inputs(
    results: Mapping[str, float],
    baseline: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
    keys: Sequence[str],
) -> None:
    if not keys:
        raise ValueError("Δm needs at least one metric")
    for k in keys:
        for what, table in (("results", results), ("baseline", baseline), ("higher_is_better", higher_is_better)):
            if k not in table:
                raise KeyError(f"metric {k!r} missing from {what} (it has {sorted(table)})")
        b = float(baseline[k])
        if b == 0.0 or not math.isfinite(b):
            raise ValueError(f"baseline of {k!r} is {b}: Δm divides by it")
        if not math.isfinite(float(results[k])):
            raise ValueError(f"result of {k!r} is {results[k]}")


def delta_m_terms(
    results: Mapping[str, float],
    baseline: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
    keys: Sequence[str] | None = None,
) -> dict[str, float]:
    """The per-metric terms ``100 (-1)^{δ_s} (M_s - B_s) / B_s`` (positive = worse than the baseline)."""
    keys = list(baseline) if keys is None else list(keys)
    _check_inputs(results, baseline, higher_is_better, keys)
    out = {}
    for k in keys:
        sign = -1.0 if higher_is_better[k] else 1.0
        out[k] = 100.0 * sign * (float(results[k]) - float(baseline[k])) / float(baseline[k])
    return out


def delta_m(
    results: Mapping[str, float],
    baseline: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
    keys: Sequence[str] | None = None,
) -> float:
    """Δm% averaged over the metrics ``keys`` (default: every metric of ``baseline``)."""
    terms = delta_m_terms(results, baseline, higher_is_better, keys)
    return sum(terms.values()) / len(terms)


def delta_m_per_task(
    results: Mapping[str, float],
    baseline: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
    keys: Sequence[str] | None = None,
    task_of: Mapping[str, str] | None = None,
) -> tuple[float, dict[str, float]]:
    """Δm% averaged within each task first, then over tasks; returns ``(Δm, {task: Δm_task})``.

    The task of a metric is ``task_of[key]`` or the part of ``"task/metric"`` before the slash.
    """
    terms = delta_m_terms(results, baseline, higher_is_better, keys)
    per_task: dict[str, list[float]] = {}
    for k, v in terms.items():
        task = task_of[k] if task_of is not None else k.split("/", 1)[0]
        per_task.setdefault(task, []).append(v)
    means = {t: sum(v) / len(v) for t, v in per_task.items()}
    return sum(means.values()) / len(means), means


def mean_rank(
    table: Mapping[str, Mapping[str, float]],
    higher_is_better: Mapping[str, bool],
    keys: Sequence[str] | None = None,
) -> dict[str, float]:
    """MR of every method of ``table`` (``method -> {metric: value}``) over the metrics ``keys``.

    Rank 1 is the best value of a metric; tied values share their average rank.
    """
    methods = list(table)
    if not methods:
        raise ValueError("mean_rank needs at least one method")
    keys = list(higher_is_better) if keys is None else list(keys)
    if not keys:
        raise ValueError("mean_rank needs at least one metric")
    totals = dict.fromkeys(methods, 0.0)
    for k in keys:
        missing = [m for m in methods if k not in table[m]]
        if missing:
            raise KeyError(f"metric {k!r} missing for methods {missing}")
        sign = -1.0 if higher_is_better[k] else 1.0  # sort ascending on sign * value: best first
        values = sorted((sign * float(table[m][k]), m) for m in methods)
        i = 0
        while i < len(values):
            j = i
            while j + 1 < len(values) and values[j + 1][0] == values[i][0]:
                j += 1
            avg = (i + j) / 2 + 1
            for _, m in values[i : j + 1]:
                totals[m] += avg
            i = j + 1
    return {m: totals[m] / len(keys) for m in methods}


@dataclass(frozen=True)
class Baseline:
    """Single-task reference values of one dataset, in the units of :mod:`benchmarks.metrics`."""

    dataset: str
    name: str
    values: Mapping[str, float]
    higher_is_better: Mapping[str, bool]
    source: str

    def delta_m(self, results: Mapping[str, float]) -> float:
        return delta_m(results, self.values, self.higher_is_better)

    def delta_m_per_task(self, results: Mapping[str, float]) -> tuple[float, dict[str, float]]:
        return delta_m_per_task(results, self.values, self.higher_is_better)


@dataclass(frozen=True)
class PublishedTable:
    """Published Δm% (and MR, per-metric rows where printed) of one protocol of one dataset."""

    dataset: str
    name: str
    source: str
    protocol: str
    baseline: str
    methods: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


_DATASETS = ("nyuv2", "cityscapes", "qm9", "celeba")


def _load_json(dataset: str) -> dict[str, Any]:
    if dataset not in _DATASETS:
        raise KeyError(f"no published baselines for {dataset!r}; available: {', '.join(_DATASETS)}")
    text = resources.files("benchmarks.baselines").joinpath(f"{dataset}.json").read_text(encoding="utf-8")
    return json.loads(text)


def published_datasets() -> tuple[str, ...]:
    return _DATASETS


def load_baseline(dataset: str, name: str = "stl") -> Baseline:
    """The published single-task baseline ``name`` of ``dataset`` (``"stl"``; QM9 also ``"stl_ntkmtl"``)."""
    data = _load_json(dataset)
    if name not in data["baselines"]:
        raise KeyError(f"{dataset}: no baseline {name!r}; available: {', '.join(data['baselines'])}")
    entry = data["baselines"][name]
    return Baseline(
        dataset=dataset,
        name=name,
        values={k: float(entry["values"][k]) for k in data["metrics"]},
        higher_is_better={k: bool(data["higher_is_better"][k]) for k in data["metrics"]},
        source=entry["source"],
    )


def load_table(dataset: str, name: str = "published") -> PublishedTable:
    """A published per-method table of ``dataset`` (QM9 also has ``"ntkmtl_rerun"``)."""
    data = _load_json(dataset)
    if name not in data["tables"]:
        raise KeyError(f"{dataset}: no table {name!r}; available: {', '.join(data['tables'])}")
    t = data["tables"][name]
    return PublishedTable(
        dataset=dataset,
        name=name,
        source=t["source"],
        protocol=t["protocol"],
        baseline=t["baseline"],
        methods=t["methods"],
    )


def user_baseline(
    dataset: str, values: Mapping[str, float], higher_is_better: Mapping[str, bool], source: str = "mtlagg-bench stl"
) -> Baseline:
    """A baseline from the user's own single-task runs (``mtlagg-bench stl``), checked for completeness."""
    missing = [k for k in higher_is_better if k not in values]
    if missing:
        raise KeyError(f"{dataset}: the single-task results lack the metrics {missing}")
    return Baseline(dataset, "user", dict(values), dict(higher_is_better), source)
